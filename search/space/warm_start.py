"""A space file's ``tune.warm_start``: what a search knows before its first trial.

    tune:
      warm_start:
        - base                                   # the base values of the searched keys
        - {optim.lr: 3.0e-5, grad.method: sum}   # these values; the other searched keys from the base
        - paper-002.yaml                         # a run config or space file: its values of the searched keys
        - ../results/pcgrad                      # an earlier search's folder: its finished trials

Each entry but a folder is a *point*: a value for every searched key that is active there (a
dimension under ``when:`` only where its condition holds for the point's values). Points are the
search's first trials, in the order written (the engine enqueues them in Optuna's study), each
counted in ``tune.num_samples``. A point is checked against the dimensions when the space loads: a
value outside a range, off its step, or not among the choices, or a key that is no dimension (or
whose dimension the point's other values switch off), is a ``SpaceError`` naming the entry and the
key (``tune.warm_start[1].optim.lr``); the run config of each point is validated as a trial's is.

- ``base``: the value the base run config (after the profile, ``--smoke`` and ``--set``) holds
  at each searched key; for a choice, the choice that leaves the base as it is.
- a file (a run config, or a space file, whose ``search:`` and ``tune:`` are ignored): its run
  config as ``mtbert-train`` reads it, defaults included, without the space's profile.
- a folder holding an earlier search (``search.json`` and Tune's saved searcher state): its
  finished trials join the new study with their values and intermediate values, as COMPLETE or
  PRUNED, without running again; this module only checks the folder is one
  (``search.engine.warm_start`` reads the study, and skips a trial that does not fit the space).

A relative path is looked up next to the space file first, then in the current directory.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbert.config import ConfigError, read_config, set_dotted
from mtbert.errors import did_you_mean, show
from search.errors import SpaceError
from search.space.dimensions import Choice, Dimension, flow, read_numbers, same
from search.space.values import set_values, value_at

BASE = "base"
SEARCH_FILE = "search.json"  # search.launch.SEARCH_FILE: what every search folder holds
SEARCHER_STATE = "searcher-state-*.pkl"  # Ray Tune's saved searcher, the Optuna study inside
EXAMPLE = "base, a mapping such as {optim.lr: 3.0e-5}, a run config or space file, or an earlier search's folder"


@dataclass(frozen=True)
class WarmPoint:
    """A point the search runs first."""

    where: str  # tune.warm_start[i]
    source: str  # "base", the mapping as written, or the file it came from
    values: dict[str, Any]  # {dotted key: real value} of the dimensions active there
    params: dict[str, Any]  # Optuna's parameters, as ``Space.define_by_run`` suggests them


@dataclass(frozen=True)
class EarlierSearch:
    """A search folder whose finished trials join the study."""

    where: str
    folder: Path


def read_entries(raw: Any, where: str, path: Path, base: dict[str, Any], dims: list[Dimension],
                 finish: Callable[[dict[str, Any]], None] | None = None) -> list:  # fmt: skip
    """The entries of ``tune.warm_start`` (``where``), read and checked: ``WarmPoint`` and
    ``EarlierSearch`` in order. ``base`` is the base run config's data; ``finish`` does to a
    config's data what a trial's config gets after its values (the smoke sizes), in place."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpaceError(path, where, f"is {show(raw)}, but must be a list of entries: {EXAMPLE}")
    out: list = []
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if entry == BASE:
            out.append(WarmPoint(at, BASE, *point(dims, base, {}, at, path, finish=finish)))
        elif isinstance(entry, dict):
            given = {str(k): read_numbers(v) for k, v in entry.items()}
            written = "{" + ", ".join(f"{k}: {flow(v)}" for k, v in given.items()) + "}"
            out.append(WarmPoint(at, written, *point(dims, base, given, at, path, finish=finish)))
        elif isinstance(entry, str) and entry:
            found = locate(entry, at, path)
            if found.is_dir():
                check_search_folder(found, at, path)
                out.append(EarlierSearch(at, found))
            else:
                try:
                    data = read_config(found).to_dict()
                    if finish:
                        finish(data)
                except ConfigError as e:
                    raise SpaceError(path, at, f"{found}: {e.key}: {e.message}") from None
                out.append(WarmPoint(at, str(found), *point(dims, data, {}, at, path, f"{found}'s value", finish)))
        else:
            raise SpaceError(path, at, f"is {show(entry)}, but each entry must be {EXAMPLE}")
    return out


def locate(entry: str, at: str, path: Path) -> Path:
    """The file or folder ``entry`` names: as given when absolute, else next to the space file, then
    in the current directory."""
    given = Path(entry).expanduser()
    tried = [given] if given.is_absolute() else [path.parent / given, Path.cwd() / given]
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    looked = " or ".join(str(p) for p in dict.fromkeys(tried))
    hint = did_you_mean(entry, [BASE]) if "/" not in entry and "." not in entry else ""
    raise SpaceError(path, at, f"{entry!r}{hint} is not 'base', and no file or folder is there (looked at {looked}); "
                               f"an entry is {EXAMPLE}")  # fmt: skip


def check_search_folder(folder: Path, at: str, path: Path) -> None:
    if not (folder / SEARCH_FILE).is_file():
        raise SpaceError(path, at, f"{folder} is a folder but holds no search ({SEARCH_FILE} is missing); give a "
                                   "search folder, <tune.storage_path>/<tune.name>")  # fmt: skip
    if not any(folder.glob(SEARCHER_STATE)):
        raise SpaceError(path, at, f"{folder} holds a search that saved no Optuna study yet (no {SEARCHER_STATE}): "
                                   "it has no finished trial to start from")  # fmt: skip


# ---- points ------------------------------------------------------------------------------------


def point(dims: list[Dimension], data: dict[str, Any], given: dict[str, Any], at: str, path: Path,
          what: str = "the base value", finish: Callable[[dict[str, Any]], None] | None = None,
          ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """``(values, params)`` of a point: ``given`` values for their keys, ``data``'s (a run config's
    data) for the other active dimensions; ``params`` are named and encoded as Optuna suggests them
    (``key#i`` for alternative i, list choices as JSON text). The inverse of ``Space.decode``."""
    values: dict[str, Any] = {}
    params: dict[str, Any] = {}
    keys = list(dict.fromkeys(d.key for d in dims))
    for key in given:
        if key not in keys:
            raise SpaceError(path, f"{at}.{key}", f"is not a searched key{did_you_mean(key, keys)}; a point gives "
                                                  f"values of the dimensions: {', '.join(keys)}")  # fmt: skip
    for d in dims:  # conditions come before the dimensions they guard
        if d.key in values or not d.active(values):
            continue
        if d.key in given:
            value = given[d.key]
            problem = misfit(d, value)
            if problem:
                raise SpaceError(path, f"{at}.{d.key}", f"is {flow(value)}, but {problem}")
        else:
            value = from_config(d, data, [k for k in keys if k.startswith(f"{d.key}.")], finish)
            if value is _NONE:
                held = value_at(data, d.key)
                raise SpaceError(path, f"{at}.{d.key}", f"{what} {flow(held)} does not fit the dimension "
                                                        f"({d.describe()}); give the point a value for {d.key}")  # fmt: skip
        values[d.key] = copy.deepcopy(value)
        params[d.name] = encode(d, value)
    for key in given:
        if key not in values:
            alternatives = [d for d in dims if d.key == key]
            needs = "; ".join(f"{c}: {', '.join(map(flow, v))}" for d in alternatives for c, v in d.when.items())
            has = ", ".join(f"{c} {flow(values[c])}" for d in alternatives for c in d.when if c in values)
            raise SpaceError(path, f"{at}.{key}", f"sets {key}, but its dimension is off for this point: it applies "
                                                  f"when {needs}, and the point has {has or 'none of them'}")  # fmt: skip
    return values, params


_NONE = object()


def from_config(d: Dimension, data: dict[str, Any], inner: list[str],
                finish: Callable[[dict[str, Any]], None] | None = None) -> Any:  # fmt: skip
    """The dimension's value that a run config's ``data`` holds, or ``_NONE`` when none fits. For a
    choice: the choice whose setting leaves ``data`` as it is, once the searched keys ``inner`` it
    holds (``phases.1.steps`` under ``phases``) take ``data``'s values again and ``finish`` ran."""
    held = value_at(data, d.key)
    if isinstance(d, Choice):
        for choice in d.choices:
            changed = copy.deepcopy(data)
            try:
                set_values(changed, [(d, choice)])
                for key in inner:
                    if value_at(changed, key.rpartition(".")[0]) is not None:
                        set_dotted(changed, key, copy.deepcopy(value_at(data, key)), None)
                if finish:
                    finish(changed)
            except ConfigError:
                continue
            if same(value_at(changed, d.key), held):
                return choice
        return _NONE
    return _NONE if misfit(d, held) else (int(held) if d.integer else float(held))


def misfit(d: Dimension, value: Any) -> str | None:
    """Why ``value`` is not one the dimension can take (None if it is)."""
    if isinstance(d, Choice):
        return None if d.can_take(value) else f"must be one of its choices: {', '.join(map(flow, d.choices))}"
    if not d.can_take(value):
        return f"must be in {d.describe()}"
    if d.step and not d.integer:  # a float range's step: the value is on the grid
        steps = (value - d.low) / d.step
        if not math.isclose(steps, round(steps), abs_tol=1e-9):
            return f"must be on the grid of {d.describe()}"
    return None


def encode(d: Dimension, value: Any) -> Any:
    """A real value as Optuna's parameter holds it."""
    if isinstance(d, Choice):
        return d.encode(value)
    return int(value) if d.integer else float(value)


def describe(entries: list, num_samples: int) -> list[str]:
    """Notes for the start of a search: the points first (and those beyond num_samples that never
    run), then the searches whose trials join the study."""
    points = [e for e in entries if isinstance(e, WarmPoint)]
    lines = []
    if points:
        names = ", ".join(p.source for p in points)
        lines.append(f"warm start: the first {'trial is' if len(points) == 1 else f'{len(points)} trials are'} {names}")
        if len(points) > num_samples:
            lines.append(f"warm start: only the first {num_samples} point(s) run: tune.num_samples is {num_samples}")
    for e in entries:
        if isinstance(e, EarlierSearch):
            lines.append(f"warm start: the finished trials of {e.folder} join the study (they do not run again)")
    return lines
