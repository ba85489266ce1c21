"""The words every error message shares: a value shown as the user wrote it, a "did you mean" hint
for a misspelt name, and the phrases for an unknown setting, an unknown name and a value outside
its choices.

The run config, the plug-in registries, the schedules and the search space all build their messages
from these, so the same mistake reads the same wherever it is made:

    unknown setting (did you mean 'optim.lr'?); allowed here: lr, head_lr, ...
    unknown grad.method 'pcgard' (did you mean 'pcgrad'?); choose from: cagrad, gradvac, pcgrad, ...
    is "adam", but must be one of: constant, linear, slanted_triangular

This module imports nothing of the project: everything else may import it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``name``, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: object) -> str:
    """A value as the user wrote it in YAML: strings quoted, the rest as YAML would print it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def show_json(value: Any) -> str:
    """A value as JSON (``"cls"``, ``true``, ``[128, 64]``); the run config's messages use it."""
    return json.dumps(value) if isinstance(value, (str, int, float, bool, type(None), list)) else repr(value)


def unknown_setting(name: str, known: Iterable[str], allowed: Iterable[str]) -> str:
    """A key that is not a setting: the hint comes from ``known`` (full keys), the list from ``allowed``."""
    return f"unknown setting{did_you_mean(name, known)}; allowed here: {', '.join(allowed)}"


def unknown_name(what: str | None, name: object, choices: Iterable[str]) -> str:
    """A name that no plug-in (or choice) of kind ``what`` has, e.g. ``unknown loss 'cee' ...``; with
    ``what`` None (the key already names the kind) ``unknown 'cee' ...``."""
    choices = sorted(choices)
    kind = f" {what}" if what else ""
    return f"unknown{kind} {name!r}{did_you_mean(name, choices)}; choose from: {', '.join(choices)}"


def one_of(choices: Iterable[Any]) -> str:
    """The constraint of a value with fixed choices: ``must be one of: a, b``."""
    return f"must be one of: {', '.join(map(str, choices))}"
