"""A search's Optuna study rebuilt from its trials' results, when the copy Tune saved is cut short.

Tune writes the searcher's state (``searcher-state-*.pkl``: the Optuna study) into its staging
folder and then copies it into the search folder, not atomically: a search killed during that copy
leaves the file empty or cut short. ``Tuner.restore`` then fails to read it, says so in one log
line ("Failed to restore the run state"), and goes on with a run state that is neither the saved
one nor a new one (seen: a resume that waited forever for a trial its searcher would never give).

``repair_study``, called by ``resume`` before Tune restores anything, checks that the newest saved
state loads; when it does not, it writes in its place a searcher (the search's sampler, as a new
search builds it) whose study holds every finished trial of the folder, as the search's own
searcher recorded it: COMPLETE when it ran its whole budget, else PRUNED, with each evaluation as an
intermediate value at its training iteration. Trials still running when the search was killed go
on from their checkpoints; the rebuilt study has not heard of them, so they run without Optuna
learning from them (``PruningOptunaSearch._unknown`` says so), and warm-start points not yet run
are not run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from optuna.trial import TrialState, create_trial

from search.engine.analysis import read_trials
from search.engine.samplers import build_sampler
from search.engine.searcher import PruningOptunaSearch, load_searcher
from search.engine.trainable import COMPLETE_KEY, STOP_KEY, TRAINING_ITERATION
from search.engine.warm_start import PROPOSED_BY, Misfit, Replay
from search.space.sampler import sampler_options

STATE_FILES = "searcher-state-*.pkl"
REBUILT = "rebuilt from its results"  # the proposed_by of a trial put back into a rebuilt study


def repair_study(experiment: Path, space: Any, max_t: int, log: Any = print) -> bool:
    """Rebuild the saved study of ``experiment`` if it cannot be read (see the module doc); returns
    whether it did. A folder without a saved study is left alone (Tune then starts its searcher anew)."""
    saved = sorted(Path(experiment).glob(STATE_FILES))
    if not saved or load_searcher(experiment) is not None:
        return False
    newest = max(saved)  # the file Tune restores from
    t = space.tune
    kind, options = sampler_options(t.sampler, t.num_samples, t.seed)
    searcher = PruningOptunaSearch(space=space.define_by_run, metric=t.metric, mode=t.mode,
                                   sampler=build_sampler(kind, options), max_t=max_t, sampler_kind=kind,
                                   sampler_options=options)  # fmt: skip
    study = searcher.study()
    added = 0
    for trial in read_trials(experiment, t.metric, t.mode):
        frozen = _finished_trial(space, trial, t.metric, max_t)
        if frozen is not None:
            study.add_trial(frozen)
            added += 1
    partial = newest.with_name(f".{newest.name}.partial")
    searcher.save(str(partial))
    os.replace(partial, newest)
    log(f"{experiment}: the Optuna study saved with the search ({newest.name}) was cut short (the search was "
        f"killed while it was written); rebuilt from the results of its {added} finished trial(s). Trials that "
        "were running go on from their checkpoints, without Optuna learning from them")  # fmt: skip
    return True


def _finished_trial(space: Any, trial: Any, metric: str, max_t: int) -> Any:
    """A trial that ended (Tune's TERMINATED) as the search's searcher records it, or None."""
    if trial.status != "TERMINATED":
        return None
    rows = [r for r in trial.rows if r.get(metric) is not None and r.get(TRAINING_ITERATION) is not None]
    if not rows:
        return None
    steps: dict[int, float] = {}
    for row in rows:  # Optuna keeps the first value of a step
        steps.setdefault(int(row[TRAINING_ITERATION]), float(row[metric]))
    last = rows[-1]
    complete = not _text(last.get(STOP_KEY)) and (_flag(last.get(COMPLETE_KEY))
                                                 or int(last[TRAINING_ITERATION]) >= max_t)  # fmt: skip
    value = float(last[metric])
    if complete and not math.isfinite(value):
        complete = False
    replay = Replay(dict(trial.config), {})
    try:
        space.define_by_run(replay)
    except Misfit:
        return None
    return create_trial(
        state=TrialState.COMPLETE if complete else TrialState.PRUNED, value=value if math.isfinite(value) else None,
        params={n: trial.config[n] for n in replay.asked}, distributions=dict(replay.asked),
        intermediate_values=steps, user_attrs={PROPOSED_BY: REBUILT},
    )  # fmt: skip


def _flag(value: Any) -> bool:
    """Whether a result's ``trial_complete`` column is set (pandas gives NaN where a row lacks it)."""
    return str(value) == "True"


def _text(value: Any) -> bool:
    """Whether a result's ``stop_reason`` column holds a reason (pandas reads a missing one as NaN)."""
    return isinstance(value, str) and bool(value)
