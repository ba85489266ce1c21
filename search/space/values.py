"""A space's values on the run config: the keys a dimension may set, and how values are set.

``build`` is the one place the space makes a ``RunConfig`` from plain data: every field checked
(``mtbert.config``), then the run as a whole (``mtbert.validation``); a bad value raises
``ConfigError``. ``set_values`` puts a trial's values into a config's data, ``apply`` does so on a
config and builds the result.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

from mtbert import validate
from mtbert.config import PhaseConfig, RunConfig, all_keys, flatten, from_dict, set_dotted
from mtbert.errors import did_you_mean
from search.space.dimensions import Dimension

__all__ = ["apply", "build", "run_key_problem", "set_values", "value_at"]


def build(data: dict[str, Any]) -> RunConfig:
    """A run config from plain data, checked field by field and as a whole. Raises ``ConfigError``."""
    return validate(from_dict(data))


def apply(base: RunConfig, chosen: list[tuple[Dimension, Any]]) -> RunConfig:
    """``base`` with each dimension's value set, built. Raises ``ConfigError``."""
    data = base.to_dict()
    set_values(data, chosen)
    return build(data)


def set_values(data: dict[str, Any], chosen: list[tuple[Dimension, Any]]) -> None:
    """Set each dimension's value in a config's ``data`` (a mapping on a section sets those keys of
    it; a whole list such as ``phases`` is replaced), shorter keys first so ``phases`` comes before
    ``phases.1.steps``. Raises ``ConfigError`` for a key that is not a setting."""
    for d, value in sorted(chosen, key=lambda dv: dv[0].key.count(".")):
        for key, v in _expand(data, d.key, value):
            set_dotted(data, key, copy.deepcopy(v), None)


def _expand(data: dict[str, Any], key: str, value: Any) -> list[tuple[str, Any]]:
    if key == "phases" and isinstance(value, list):  # whole phases, so phases.1.steps can go on them
        return [(key, [_phase_item(v) for v in value])]
    if isinstance(value, dict) and isinstance(value_at(data, key), dict) and not key.endswith(".set"):
        return list(flatten(value, f"{key}.").items())
    return [(key, value)]


def _phase_item(value: Any) -> Any:
    """A phase as the config holds it: ``specialist`` is short for ``{kind: specialist}``."""
    value = {"kind": value} if isinstance(value, str) else value
    return {**dataclasses.asdict(PhaseConfig()), **value} if isinstance(value, dict) else value


def value_at(data: Any, key: str) -> Any:
    """The value at a dotted key of a config dict (list items by index), or None."""
    for part in key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


# ---- what a dimension may set ----------------------------------------------------------------


def run_key_problem(key: str, extra: Iterable[str] = ()) -> str | None:
    """Why ``key`` names no run setting (with a "did you mean" from the run keys and ``extra``), or
    None. Sections (``heads.sst``) and list items (``phases.1``, ``phases.1.set.optim.lr``) count."""
    keys, sections = _run_keys()
    if key in keys or key in sections:
        return None
    parts = key.split(".")
    fields = [f.name for f in dataclasses.fields(PhaseConfig)]
    candidates = sorted(keys | sections) + list(extra)
    if parts[0] == "phases" and len(parts) > 1 and parts[1].isdigit():
        rest, index = parts[2:], parts[1]
        if not rest or (len(rest) == 1 and rest[0] in fields):
            return None
        sub = ".".join(rest[1:])
        if rest[0] == "set" and (not sub or sub in keys or sub in sections):
            return None
        candidates = [f"phases.{index}.{f}" for f in fields] + [f"phases.{index}.set.{k}" for k in keys]
    return f"is not a run setting{did_you_mean(key, candidates)}"


@functools.cache
def _run_keys() -> tuple[frozenset[str], frozenset[str]]:
    """Every run setting's dotted key, and every section above one (``heads.sst``, ``heads``)."""
    keys = frozenset(all_keys())
    return keys, frozenset(k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1))
