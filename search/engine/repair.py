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

A study kept in a database (``tune.study_storage``) is never cut short: the database is written as
trials report, and the saved state only says where it is. A state that cannot be read is then
replaced by one that points at the database, whose trials are taken as they are (none is added, so
none is there twice). The state of a search whose folder moved with its ``study.db`` (the default
storage) is pointed at the file where the folder is now. Trials the database holds as RUNNING that
Tune's saved state does not know (proposed after Tune last saved it) are told FAIL: they never run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from search.engine.analysis import read_trials
from search.engine.samplers import build_sampler
from search.engine.searcher import PruningOptunaSearch, load_searcher
from search.engine.study import check_reachable, folder_ref, tune_trial_ids
from search.engine.trainable import COMPLETE_KEY, STOP_KEY, TRAINING_ITERATION
from search.engine.warm_start import PROPOSED_BY, Misfit, Replay
from search.errors import SearchError
from search.space.sampler import sampler_options

STATE_FILES = "searcher-state-*.pkl"
REBUILT = "rebuilt from its results"  # the proposed_by of a trial put back into a rebuilt study


def repair_study(experiment: Path, space: Any, max_t: int, log: Any = print) -> bool:
    """Rebuild the saved study of ``experiment`` if it cannot be read (see the module doc); returns
    whether it did. A folder without a saved study is left alone (Tune then starts its searcher anew).
    A study in a database must be there (``SearchError``, else), and has its lost trials told FAIL
    (``_fail_lost``)."""
    saved = sorted(Path(experiment).glob(STATE_FILES))
    if not saved:
        return False
    ref = folder_ref(experiment)  # the study's storage as the launch record names it
    if ref is not None:
        check_reachable(ref)  # a server that is down: said before Ray starts
    repaired = _repair_state(experiment, space, max_t, max(saved), ref, log)  # the newest: the one Tune restores
    if ref is not None:
        _fail_lost(experiment, ref, space, log)
    return repaired


def _fail_lost(experiment: Path, ref: Any, space: Any, log: Any) -> None:
    """Trials the database holds as RUNNING that Tune's saved state does not know, told FAIL: they were
    proposed after Tune last saved its state, and the killed search took them along; nothing will
    report for them again (Optuna's own heartbeat would fail them the same way)."""
    try:
        known = {trial.trial_id for trial in read_trials(experiment, space.tune.metric, space.tune.mode)}
    except SearchError:  # Tune's trials do not read: nothing is told
        return
    study = optuna.load_study(study_name=ref.name, storage=ref.storage())
    ours = {t.number: tid for tid, t in tune_trial_ids(study).items()}
    lost = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if ours.get(t.number) not in known]  # fmt: skip
    for number in lost:
        study.tell(number, state=TrialState.FAIL)
    if lost:
        log(f"{experiment}: Optuna trial(s) {', '.join(map(str, lost))} were proposed after Tune last saved the "
            "search's state and will not run: recorded as FAIL")  # fmt: skip


def _repair_state(experiment: Path, space: Any, max_t: int, newest: Path, ref: Any, log: Any) -> bool:
    loaded = load_searcher(experiment)
    if loaded is not None:
        if ref is None or loaded.study_ref() in (None, ref):
            return False
        loaded.point_at(ref)
        _write(loaded, newest)
        log(f"{experiment}: the search folder moved; its Optuna study is read from {ref.shown()}")
        return True
    t = space.tune
    kind, options = sampler_options(t.sampler, t.num_samples, t.seed)
    searcher = PruningOptunaSearch(space=space.define_by_run, metric=t.metric, mode=t.mode,
                                   sampler=build_sampler(kind, options), max_t=max_t, sampler_kind=kind,
                                   sampler_options=options, study=ref)  # fmt: skip
    if ref is not None:
        _write(searcher, newest)
        log(f"{experiment}: the searcher's state saved with the search ({newest.name}) was cut short (the search "
            f"was killed while it was written); its Optuna study is read again from {ref.shown()}, where every "
            "trial is recorded")  # fmt: skip
        return True
    study = searcher.study()
    added = 0
    for trial in read_trials(experiment, t.metric, t.mode):
        frozen = _finished_trial(space, trial, t.metric, max_t)
        if frozen is not None:
            study.add_trial(frozen)
            added += 1
    _write(searcher, newest)
    log(f"{experiment}: the Optuna study saved with the search ({newest.name}) was cut short (the search was "
        f"killed while it was written); rebuilt from the results of its {added} finished trial(s). Trials that "
        "were running go on from their checkpoints, without Optuna learning from them")  # fmt: skip
    return True


def _write(searcher: PruningOptunaSearch, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    searcher.save(str(partial))
    os.replace(partial, path)


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
