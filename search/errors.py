"""The one error a space file raises: it names the file, the key path and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class SpaceError(ValueError):
    """A bad space file (or ``--set`` override), found before Ray starts or any folder is made.

    ``str(e) == f"{path}: {key}: {message}"``; ``key`` is the full key path in the file, such as
    ``search.optim.lr``, ``tune.reduction_factor`` or ``--set tune.num_samples``.
    """

    def __init__(self, path: str | Path, key: str, message: str):
        self.path, self.key, self.message = str(path), key, message
        super().__init__(f"{self.path}: {key}: {message}")


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: object) -> str:
    """A value as the user wrote it: strings quoted, the rest as YAML would print it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)
