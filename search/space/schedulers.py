"""``tune.scheduler``: the Tune scheduler that decides which trials go on, and its options, checked
before a search starts (this module builds nothing of Ray's; ``search.engine.schedulers`` does).

    tune:
      scheduler: asha                                        # the default
      scheduler: {kind: asha, grace_period: 2, reduction_factor: 3}
      scheduler: {kind: hyperband, reduction_factor: 3}
      scheduler: fifo                                        # every trial runs its whole budget
      scheduler: {kind: pbt, perturbation_interval: 2, quantile_fraction: 0.25,
                  resample_probability: 0.25, mutations: [optim.lr, grad.weights.sst]}

- ``asha`` (asynchronous successive halving): ``grace_period``, ``reduction_factor``, ``max_t``.
- ``hyperband`` (Ray's synchronous HyperBand, several brackets of successive halving):
  ``reduction_factor``, ``max_t``.
- ``fifo``: no options; no trial is stopped early.
- ``pbt`` (Population Based Training): every ``perturbation_interval`` evaluations a trial in the
  bottom ``quantile_fraction`` of the running trials continues from the checkpoint of one in the
  top fraction, with its settings, each of ``mutations`` then changed: resampled from its
  dimension with ``resample_probability``, else perturbed (a range's value times 0.8 or 1.2, kept
  inside the range; a choice's or an int range's value moved to a neighbour).

The options ``grace_period``, ``reduction_factor`` and ``max_t`` are the settings ``tune.grace_period``,
``tune.reduction_factor`` and ``tune.max_t``: written under ``tune.scheduler`` or at the top of
``tune:``, they are one setting, and a later layer (profile, ``--smoke``, ``--set``) overrides an
earlier one wherever each was written; one layer may not give both. Kinds that do not use them
(fifo, pbt; hyperband's grace_period) ignore the top-level keys, and refuse them under
``tune.scheduler``.

PBT's ``mutations`` are keys of dimensions under ``search:`` (each is mutated within its own
dimension, so the range to mutate in is written once); not given, they are every searched
dimension that may change during a run. A key that cannot change in the middle of a run (the
encoder, a head's kind, ``model.freeze_depth``, the phases, ``sampling.schedule``, ...) is refused,
with the reason ``mtbert.config.resume.resume_fixed`` gives. ``perturbation_interval`` not given
is a quarter of a trial's evaluations (at least 1); it must leave a trial at least one
perturbation (< ``max_t``); under ``--smoke`` an interval too long for the smoke run's few
evaluations is shortened to that default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbert.errors import did_you_mean, one_of, show
from search.errors import SpaceError

KINDS = ("asha", "hyperband", "pbt", "fifo")
DEFAULT = "asha"
# Options that are top-level tune settings of the same name (ASHA's and HyperBand's).
SHARED = ("grace_period", "reduction_factor", "max_t")
OPTIONS: dict[str, tuple[str, ...]] = {
    "asha": ("grace_period", "reduction_factor", "max_t"),
    "hyperband": ("reduction_factor", "max_t"),
    "pbt": ("perturbation_interval", "quantile_fraction", "resample_probability", "mutations"),
    "fifo": (),
}
NAMES = {"asha": "ASHA", "hyperband": "HyperBand", "pbt": "PBT", "fifo": "FIFO"}


@dataclass(frozen=True)
class SchedulerSettings:
    """The checked ``tune.scheduler`` (ASHA's and HyperBand's options are the top-level settings)."""

    kind: str = DEFAULT
    # PBT: evaluations between a trial's chances to exploit another; None: a quarter of max_t, at least 1
    perturbation_interval: int | None = None
    quantile_fraction: float = 0.25  # PBT: the bottom fraction exploits the top fraction (0 < q <= 0.5)
    resample_probability: float = 0.25  # PBT: the chance a mutated value is drawn anew from its dimension
    # PBT: keys of searched dimensions; None until the space is read, then the keys mutated
    mutations: tuple[str, ...] | None = None

    def interval(self, max_t: int) -> int:
        """PBT's perturbation interval in evaluations."""
        return self.perturbation_interval or default_interval(max_t)


def default_interval(max_t: int) -> int:
    return max(1, max_t // 4)


# ---- reading the layers: what TuneLayers.update does with scheduler keys ----------------------------


def merge(values: dict[str, Any], sources: dict[str, str], key: str, value: Any, where: str,
          conflicts: list[tuple[str, str]], written: dict[str, str]) -> None:  # fmt: skip
    """Merge one layer's ``scheduler`` (``key == "scheduler"``) or ``scheduler.<option>`` into the
    merged tune ``values``: the scheduler is kept as a mapping ``{kind: ..., option: value}``; a
    shared option (``SHARED``) is also set as the top-level setting it is. ``written`` maps each
    shared option this layer wrote to where, so the same option written in both places of one
    layer is recorded in ``conflicts``."""
    if key == "scheduler":
        body = dict(value) if isinstance(value, dict) else {"kind": value}
        kind_where = f"{where}.kind" if isinstance(value, dict) else where
        if isinstance(value, dict) and "kind" not in value:
            body["kind"] = _Missing(where)
        values["scheduler"] = body
        for k in [k for k in sources if k.startswith("scheduler.")]:
            del sources[k]
        sources["scheduler"] = where
        sources["scheduler.kind"] = kind_where
        for option in body:
            if option != "kind":
                sources[f"scheduler.{option}"] = f"{where}.{option}"
        shared = {o: body[o] for o in SHARED if o in body}
    else:
        option = key.removeprefix("scheduler.")
        body = values.get("scheduler")
        if not isinstance(body, dict):
            body = {"kind": DEFAULT if body is None else body}
            values["scheduler"] = body
            sources.setdefault("scheduler", where)
            sources.setdefault("scheduler.kind", sources.get("scheduler", where))
        body[option] = value
        sources[f"scheduler.{option}"] = where
        shared = {option: value} if option in SHARED else {}
    for option, v in shared.items():
        place = sources[f"scheduler.{option}"]
        if option in written:
            conflicts.append((place, written[option]))
        values[option] = v
        sources[option] = place
        written[option] = place


class _Missing:
    """A mapping written without ``kind``: an error when the settings are built."""

    def __init__(self, where: str):
        self.where = where


# ---- checking -----------------------------------------------------------------------------------


def check(raw: Any, sources: dict[str, str], path: Path) -> SchedulerSettings:
    """The scheduler settings of the merged ``raw`` mapping (``merge``), every option checked where
    it was written; ASHA's and HyperBand's options are checked as the top-level settings."""
    if raw is None:
        return SchedulerSettings()
    kind = raw.get("kind", DEFAULT)
    kind_where = sources.get("scheduler.kind", "tune.scheduler")
    if isinstance(kind, _Missing):
        raise SpaceError(path, kind.where, f"has no kind; give kind: {' | '.join(KINDS)} (e.g. {{kind: pbt, "
                                           "perturbation_interval: 2}), or the kind alone (scheduler: fifo)")  # fmt: skip
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpaceError(path, kind_where, f"scheduler is {show(kind)}{did_you_mean(kind, KINDS)}, but "
                                           f"{one_of(KINDS)}, or a mapping {{kind: ..., options}}")  # fmt: skip
    settings: dict[str, Any] = {"kind": kind}
    for option, value in raw.items():
        if option == "kind":
            continue
        where = sources.get(f"scheduler.{option}", f"tune.scheduler.{option}")
        allowed = OPTIONS[kind]
        if option not in allowed:
            takes = f"takes: {', '.join(allowed)}" if allowed else "takes no options"
            hint = did_you_mean(option, allowed) if allowed else ""
            other = [k for k in KINDS if option in OPTIONS[k]]
            also = f" ({option} is an option of {' and '.join(other)})" if other else ""
            raise SpaceError(path, where, f"{kind} has no option {show(option)}{hint}{also}; {kind} {takes}")
        if option in SHARED:
            continue  # the top-level setting: checked with the other tune settings
        problem = RULES[option](value)
        if problem:
            raise SpaceError(path, where, f"{option} is {show(value)}, but {problem}")
        settings[option] = tuple(value) if option == "mutations" and value is not None else value
    return SchedulerSettings(**settings)


def _interval(v: Any) -> str | None:
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return None
    return "must be an integer >= 1 (evaluations), or null for a quarter of a trial's evaluations"


def _quantile(v: Any) -> str | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 0.5:
        return None
    return "must be a number > 0 and <= 0.5 (the bottom fraction exploits the top fraction of the same size)"


def _probability(v: Any) -> str | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1:
        return None
    return "must be a probability, a number from 0 to 1"


def _mutations(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(k, str) and k for k in v):
        return ("must be a list of keys of dimensions under search:, e.g. [optim.lr, grad.weights.sst], or null for "
                "every searched dimension that may change during a run")  # fmt: skip
    twice = [k for i, k in enumerate(v) if k in v[:i]]
    return f"lists {twice[0]} twice; list each key once" if twice else None


RULES = {
    "perturbation_interval": _interval,
    "quantile_fraction": _quantile,
    "resample_probability": _probability,
    "mutations": _mutations,
}


# ---- against the dimensions ------------------------------------------------------------------------


def finish(t: Any, dims: list[Any], sources: dict[str, str], path: Path, smoke: bool
           ) -> tuple[SchedulerSettings, list[str]]:  # fmt: skip
    """PBT's settings checked against the space's dimensions and the merged tune settings ``t``
    (``max_t`` filled in): the mutated keys (listed, or every searched one that may change during a
    run), the perturbation interval, and a population that can exploit. Returns the scheduler
    settings with ``mutations`` filled in, and notes for the user."""
    settings, max_t = t.scheduler, t.max_t
    if settings.kind != "pbt":
        return settings, []
    from mtbert.config.resume import resume_fixed

    kind_where = sources.get("scheduler.kind", "tune.scheduler")
    if t.num_samples < 2 or (t.max_concurrent is not None and t.max_concurrent < 2):
        key, value = ("num_samples", t.num_samples) if t.num_samples < 2 else ("max_concurrent", t.max_concurrent)
        raise SpaceError(path, sources.get(key, f"tune.{key}"), f"{key} is {value}, but {kind_where} is pbt, which "
                                                                "needs at least 2 trials running together: a trial "
                                                                "exploits another one")  # fmt: skip

    notes: list[str] = []
    keys = list(dict.fromkeys(d.key for d in dims))
    where = sources.get("scheduler.mutations", f"{sources.get('scheduler', 'tune.scheduler')}.mutations")
    if settings.mutations is None:
        mutated = tuple(k for k in keys if resume_fixed(k) is None)
        if not mutated:
            fixed = "; ".join(f"{k}: {resume_fixed(k)}" for k in keys) if keys else "the space has no dimensions"
            raise SpaceError(path, where, "is not given, so PBT would mutate every searched dimension that may change "
                                          f"during a run, but there is none ({fixed}); search a learning rate, a "
                                          "loss or gradient weight, say")  # fmt: skip
    else:
        for key in settings.mutations:
            why = resume_fixed(key)
            if why is not None:
                raise SpaceError(path, where, f"lists {key}, but PBT cannot mutate it: it cannot change during a run "
                                                         f"({why}); mutate learning rates, loss or gradient weights, "
                                                         "dropout, sampling.alpha or task ratios")  # fmt: skip
            if key not in keys:
                searched = f"; searched: {', '.join(keys)}" if keys else "; the space searches nothing"
                raise SpaceError(path, where, f"lists {key}, which is not a dimension under search"
                                              f"{did_you_mean(key, keys)}: PBT mutates a searched setting within its "
                                              f"dimension (add {key} under search: with its range){searched}")  # fmt: skip
        mutated = settings.mutations
    if max_t < 2:
        raise SpaceError(path, kind_where,
                         f"is pbt, but a trial has {max_t} evaluation: PBT needs at least 2 (one to compare the "
                         "trials at, one after); evaluate more often (train.eval_every)")  # fmt: skip
    interval = settings.perturbation_interval
    interval_where = sources.get("scheduler.perturbation_interval", "tune.scheduler.perturbation_interval")
    if interval is not None and interval >= max_t:
        if smoke:
            notes.append(f"smoke test: PBT's perturbation_interval {interval} shortened to {default_interval(max_t)} "
                         f"(the smoke run has {max_t} evaluations)")  # fmt: skip
            interval = None
        else:
            raise SpaceError(path, interval_where, f"perturbation_interval is {interval}, but must be < max_t "
                                                   f"({max_t} evaluations): a trial would never be perturbed")  # fmt: skip
    return dataclasses.replace(settings, mutations=tuple(mutated), perturbation_interval=interval), notes


def describe(t: Any) -> str:
    """The scheduler of tune settings ``t`` in a few words, for the notes printed before a search."""
    s = t.scheduler
    if s.kind == "asha":
        return f"ASHA over {t.max_t} evaluations (grace {t.grace_period}, reduction {t.reduction_factor:g})"
    if s.kind == "hyperband":
        return f"HyperBand over {t.max_t} evaluations (reduction {t.reduction_factor:g})"
    if s.kind == "fifo":
        return f"no early stopping (FIFO), {t.max_t} evaluations"
    return (f"PBT over {t.max_t} evaluations (every {s.interval(t.max_t)}, the bottom {s.quantile_fraction:g} "
            f"exploit the top; mutating {', '.join(s.mutations or ())})")  # fmt: skip
