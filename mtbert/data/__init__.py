"""The data a run trains and is scored on: the course files and their malformed rows (``course``),
the on-disk token cache (``tokencache``), a run's tokenised datasets (``prepare``), length-bucketed
task streams (``stream``), the MLM phase's sentences (``sentences``), every course file read and
reported (``check``: ``mtbert-train data check``) and the task sampling
schedules (``sampling``: one class per schedule, registered in ``SCHEDULES``; a schedule reads its
own settings from the run config in ``from_config``).

Dependency direction: these modules import ``mtbert.config``, ``mtbert.tasks``, ``mtbert.registry``
and ``mtbert.errors``; ``prepare`` also asks the heads (``mtbert.model.heads``) how each task's pairs
are tokenised. Nothing here imports the training loop, the gradient methods or ``mtbert.validation``.
"""
