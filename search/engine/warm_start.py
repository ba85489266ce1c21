"""``tune.warm_start`` in Optuna's study: what a new search knows before its first trial runs.

``start_from(study, space)``, called once when a new search's searcher is built:

1. the finished trials of each earlier search named (``EarlierSearch``) join the study with
   ``study.add_trial``, COMPLETE or PRUNED as they ended there, with their values and
   intermediate values, and do not run again. A trial joins only if it is a trial of this space:
   replayed through ``Space.define_by_run``, it holds a value for every parameter this space asks
   for, each value fits this space's dimension (the range, the step, the choices), and it set no
   parameter this space does not search. It is recorded with this space's distributions, so
   every trial of the study is over one search space, as TPE's model of it needs. A trial that
   does not fit is skipped, one line each saying why; so is a whole search whose metric or mode
   is not this one's (its values would be of another score).
2. the points (``WarmPoint``) are enqueued (``study.enqueue_trial``) in order, the first
   ``tune.num_samples`` of them: Optuna hands them out as the first trials Tune asks for.

Ray's own ``points_to_evaluate`` is not used: it is ignored with a define-by-run space
(ray-project/ray #35319), and ``evaluated_rewards`` is unsupported there (#18587).

A resumed search does not come here: Tune restores the searcher as it was saved, the study's
trials and queue included, so nothing is added or enqueued twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.engine.samplers import WARM_START
from search.space.warm_start import SEARCH_FILE, EarlierSearch, WarmPoint

PROPOSED_BY = "proposed_by"  # the user attribute of every Optuna trial saying how it was proposed
EARLIER = "earlier search"  # the proposed_by of a trial added from an earlier search
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def start_from(study: Any, space: Any, read_study: Any, log: Any = print) -> None:
    """Add the earlier searches' trials, then enqueue the points (see the module doc).
    ``read_study(folder)``: the Optuna study a search folder saved, or None
    (``search.engine.searcher.saved_study``)."""
    entries = space.warm_start()
    for entry in entries:
        if isinstance(entry, EarlierSearch):
            add_trials(study, space, entry, read_study, log)
    points = [e for e in entries if isinstance(e, WarmPoint)]
    for p in points[: space.tune.num_samples]:
        study.enqueue_trial(p.params, user_attrs={PROPOSED_BY: WARM_START, "warm_start": f"{p.where}: {p.source}"})


def add_trials(study: Any, space: Any, entry: EarlierSearch, read_study: Any, log: Any = print) -> int:
    """The finished trials of ``entry.folder`` that fit ``space``, added to ``study``; returns how many."""
    folder, where = entry.folder, entry.where
    other = _launch(folder)
    t = space.tune
    if (other.get("metric"), other.get("mode")) != (t.metric, t.mode):
        log(f"{where}: {folder} skipped: it ranked trials by {other.get('metric')} ({other.get('mode')}), this search "
            f"by {t.metric} ({t.mode})")  # fmt: skip
        return 0
    old = read_study(folder)
    if old is None:
        log(f"{where}: {folder} skipped: its saved Optuna study cannot be read")
        return 0
    added = skipped = 0
    for trial in old.get_trials(deepcopy=False, states=FINISHED):
        problem, frozen = _fitted(space, trial, f"{folder} trial {trial.number}")
        if problem is None:
            study.add_trial(frozen)
            added += 1
            continue
        skipped += 1
        log(f"{where}: trial {trial.number} of {folder} skipped: {problem}")
    log(f"{where}: {added} finished trial(s) of {folder} added to the study" + (f", {skipped} skipped" if skipped
                                                                                 else ""))  # fmt: skip
    return added


def _launch(folder: Path) -> dict[str, Any]:
    """The earlier search's ``search.json`` (its metric and mode), read as plain JSON."""
    try:
        data = json.loads((folder / SEARCH_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class Misfit(Exception):
    pass


class Replay:
    """A stand-in for an Optuna trial that answers ``define_by_run`` with an earlier trial's values
    and records the distribution each parameter is asked with."""

    def __init__(self, params: dict[str, Any], distributions: dict[str, Any]):
        self.params, self.old = params, distributions
        self.asked: dict[str, Any] = {}

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> Any:
        return self._take(name, FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> Any:
        return self._take(name, IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._take(name, CategoricalDistribution(choices))

    def _take(self, name: str, distribution: Any) -> Any:
        self.asked[name] = distribution
        if name not in self.params:
            raise Misfit(f"it has no value for {name}, which this space searches")
        value = self.params[name]
        try:
            fits = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            fits = False
        if not fits:
            was = f" (searched there as {self.old[name]})" if name in self.old else ""
            raise Misfit(f"its {name} {value!r}{was} is not a value of this space's {distribution}")
        return value


def _fitted(space: Any, trial: Any, origin: str) -> tuple[str | None, Any]:
    """``(None, the trial as this study records it)``, or ``(why it does not fit, None)``."""
    replay = Replay(trial.params, trial.distributions)
    try:
        space.define_by_run(replay)
    except Misfit as e:
        return str(e), None
    extra = sorted(set(trial.params) - set(replay.asked))
    if extra:
        return f"it set {', '.join(extra)}, which this space does not search (or not for its values)", None
    value = trial.value
    if trial.state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        return f"its value is {value}", None
    try:
        frozen = create_trial(
            state=trial.state, value=value, params={n: trial.params[n] for n in replay.asked},
            distributions=dict(replay.asked), intermediate_values=dict(trial.intermediate_values),
            user_attrs={**trial.user_attrs, PROPOSED_BY: EARLIER, "earlier": origin},
        )  # fmt: skip
    except ValueError as e:
        return f"Optuna refuses it: {e}", None
    return None, frozen
