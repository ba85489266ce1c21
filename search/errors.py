"""The errors of the search: ``SpaceError``, a bad space file (it names the file, the key path and
what is allowed); ``SearchError``, bad input to a command; ``SearchInterrupted``, a search stopped
by Ctrl-C after its state was saved.

Its words (``show``, ``did_you_mean``, ``unknown_setting``) are ``mtbert.errors``', so a mistake in a
space file reads as the same mistake in a run config does.
"""

from __future__ import annotations

from pathlib import Path


class SpaceError(ValueError):
    """A bad space file (or ``--set`` override), found before Ray starts or any folder is made.

    ``str(e) == f"{path}: {key}: {message}"``; ``key`` is the full key path in the file, such as
    ``search.optim.lr``, ``tune.reduction_factor`` or ``--set tune.num_samples``.
    """

    def __init__(self, path: str | Path, key: str, message: str):
        self.path, self.key, self.message = str(path), key, message
        super().__init__(f"{self.path}: {key}: {message}")


class SearchError(ValueError):
    """Bad input to a search command (a folder that holds no search, say); the message says why."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C ended a search after its trials were stopped and its state saved: ``resume`` goes on."""

    def __init__(self, experiment: Path):
        super().__init__(str(experiment))
        self.experiment = experiment
