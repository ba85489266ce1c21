"""Gradient combiners (``grad.method``): how the per-task losses of one step become one update.

One module per method: ``sum``, ``weighted``, ``pcgrad`` (``pcgrad`` and ``pcgrad_weighted``),
``cagrad``, ``gradvac``, ``uncertainty``; ``base`` holds the ``COMBINERS`` registry, the ``Combiner``
and ``Surgery`` bases and the math they share.

To add a method: write one new module here whose class subclasses ``Combiner`` (or ``Surgery``) and
registers itself with ``@COMBINERS.register("name")``, then add one line importing it to the list
below. That import list is the registration: nothing else (trainer, config, validation) changes.

Dependency direction: the method modules import ``base``, ``mtbert.config``, ``mtbert.tasks`` and
torch; never the model, the data or the training loop. Consumers import ``COMBINERS`` from here.
"""

from mtbert.methods import cagrad, gradvac, pcgrad, sum, uncertainty, weighted  # noqa: F401  (registration)
from mtbert.methods.base import COMBINERS

__all__ = ["COMBINERS"]
