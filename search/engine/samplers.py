"""Optuna's samplers behind ``tune.sampler``: the options each kind takes, read from the sampler's own
constructor signature; their check (``check_options``, called while a space file loads); the sampler a
search runs with (``build_sampler``); and how a trial was proposed (``proposal``).

An option whose type a YAML value cannot be (a Python callable or object: TPE's ``gamma``,
``weights`` and ``constraints_func``, a sampler's ``independent_sampler``, CMA-ES's ``x0`` keyed by
Optuna's parameter names and its ``source_trials``) is refused with that reason. The rest are
checked for their type (and a lower bound for counts), then the sampler is built once with them, so
what Optuna itself refuses (``group: true`` with ``multivariate: false``, say) is an error of the
space file too, before any work starts.
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mtbert.errors import did_you_mean, show
from search.errors import SpaceError

CLASSES = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
}
BASIC = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
# Lower bounds of int options (others: >= 0); float options here must be > 0.
INT_MINIMUM = {"n_ei_candidates": 1, "popsize": 1, "inc_popsize": -1}
POSITIVE = ("prior_weight", "sigma0")
STARTUP = "startup (random)"
WARM_START = "warm start"


def _annotation(parameter: inspect.Parameter) -> str:
    hint = parameter.annotation
    return hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))


def options_of(kind: str) -> tuple[dict[str, tuple[tuple[type, ...], bool]], dict[str, str]]:
    """``({option: (types, may be null)}, {option: its annotation})``: the constructor parameters of
    the kind's sampler a space file can give, and those it cannot (they take Python objects)."""
    allowed, objects = {}, {}
    for name, p in inspect.signature(CLASSES[kind].__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        text = _annotation(p)
        parts = [t.strip() for t in text.split("|")]
        types = [t for t in parts if t != "None"]
        if len(types) == 1 and types[0] in BASIC:
            allowed[name] = (BASIC[types[0]], "None" in parts)
        else:
            objects[name] = text
    return allowed, objects


def _type_problem(name: str, value: Any, types: tuple[type, ...], nullable: bool) -> str | None:
    if value is None:
        return None if nullable else f"must be {_kind_name(types)}"
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        return f"must be {_kind_name(types)}" + (" or null" if nullable else "")
    if types == (int,) and value < INT_MINIMUM.get(name, 0):
        return f"must be an integer >= {INT_MINIMUM.get(name, 0)}"
    if float in types and (not math.isfinite(value) or (name in POSITIVE and value <= 0)):
        return "must be a finite number" + (" > 0" if name in POSITIVE else "")
    return None


def _kind_name(types: tuple[type, ...]) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[types[-1]]


def check_options(kind: str, options: dict[str, Any], where: str, path: str | Path) -> None:
    """Each option of ``tune.sampler`` (``where``) is a constructor parameter of the kind's Optuna
    sampler, of a type YAML can write, and the sampler builds with them; else a ``SpaceError`` naming
    ``<where>.<option>`` and what the kind takes."""
    cls = CLASSES[kind]
    allowed, objects = options_of(kind)
    takes = f"{kind} ({cls.__name__}) takes: {', '.join(allowed)}"
    for name, value in options.items():
        key = f"{where}.{name}"
        if name in objects:
            raise SpaceError(path, key, f"{cls.__name__}'s {name} takes a Python object ({objects[name]}), which a "
                                        f"space file cannot hold; {takes}")  # fmt: skip
        if name not in allowed:
            raise SpaceError(path, key, f"unknown option {name!r}{did_you_mean(name, allowed)}; {takes}")
        problem = _type_problem(name, value, *allowed[name])
        if problem:
            raise SpaceError(path, key, f"{name} is {show(value)}, but {problem}")
    try:
        _new(kind, options)
    except (ValueError, TypeError) as e:
        raise SpaceError(path, where, f"Optuna's {cls.__name__} refuses these options: {e}") from None


def _new(kind: str, options: dict[str, Any]) -> Any:
    with warnings.catch_warnings():  # experimental options (TPE's group, QMC itself) warn on every build
        warnings.simplefilter("ignore")
        return CLASSES[kind](**options)


def build_sampler(kind: str, options: dict[str, Any]) -> Any:
    """The Optuna sampler of ``kind`` built with ``options`` (``search.space.sampler.sampler_options``)."""
    return _new(kind, options)


def proposal(kind: str, options: dict[str, Any], study: Any, number: int) -> str:
    """How the sampler proposes trial ``number`` of ``study`` (asked just now): ``startup (random)``
    while fewer trials than its ``n_startup_trials`` have finished, counted as that sampler counts
    them (TPE: COMPLETE and PRUNED; GP: COMPLETE; CMA-ES: COMPLETE, and PRUNED with
    ``consider_pruned_trials``), else the kind (``tpe``, ``random``, ``qmc``, ``gp``, ``cmaes``)."""
    n = options.get("n_startup_trials")
    if n is None:
        return kind
    states = {TrialState.COMPLETE}
    if kind == "tpe" or (kind == "cmaes" and options.get("consider_pruned_trials")):
        states.add(TrialState.PRUNED)
    finished = sum(t.state in states and t.number != number for t in study.get_trials(deepcopy=False))
    return STARTUP if finished < n else kind
