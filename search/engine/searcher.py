"""Optuna behind Ray Tune, with trials that ASHA stopped early recorded as PRUNED.

A defect of Ray's ``OptunaSearch`` fixed here: it tells Optuna that a trial ASHA stopped early is
COMPLETE, with the score of its last (low-budget) evaluation, so TPE learns from early scores as if
they were final. ``PruningOptunaSearch`` tells Optuna such trials are PRUNED, with every evaluation
recorded as an intermediate value, which is how Optuna's own pruners leave them.

The searcher of a new search (``new_searcher``) uses the sampler ``tune.sampler`` asks for
(``search.engine.samplers``) and starts from ``tune.warm_start`` (``search.engine.warm_start``);
every trial it proposes records how, as the Optuna user attribute ``proposed_by``.

With a database (``tune.study_storage``, ``search.engine.study``) the study is written there as
trials report, each Optuna trial holding its Tune trial id (``tune_trial_id``); the searcher's saved
state then holds where the study is (a ``StudyRef``), not the study. A restored searcher takes from
the database which trials there are, which have ended and how far each got: the database is written
as trials report, the saved state only now and then.

Also here: reading the study a search saved (``saved_study``, ``optuna_states``, ``proposals``: from
its database when it has one, else from the searcher's saved state) and Optuna's parameter
importances over it (``param_importances``), so no module outside ``search.engine`` handles Optuna objects.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import NopPruner
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search import storage
from search.engine.samplers import build_sampler, proposal
from search.engine.study import (
    DEFAULT,
    FOLDER_ATTR,
    TUNE_TRIAL_ID,
    StudyRef,
    existing_study,
    folder_ref,
    load_folder_study,
    tune_trial_ids,
)
from search.engine.trainable import COMPLETE_KEY, STOP_KEY, TRAINING_ITERATION
from search.engine.warm_start import PROPOSED_BY, start_from
from search.errors import SearchError
from search.space.sampler import sampler_options

MIN_IMPORTANCE_TRIALS = 5


@dataclass
class _Internals:
    trials: dict[str, Any]  # Tune trial id -> the Optuna trial Ray asked for it
    study: Any  # optuna.Study
    completed: set[str]  # Tune trial ids already told to Optuna


def _internals(searcher: OptunaSearch) -> _Internals:
    """The Optuna trials, study and completed set inside Ray's ``OptunaSearch``. Ray 2.60 keeps them in
    ``_ot_trials``, ``_ot_study`` and ``_completed_trials`` and offers no public accessor: telling
    Optuna a trial is PRUNED needs the Optuna trial Ray asked for, and reading states the study. A
    searcher restored from its saved state opens its database study here, at first use."""
    if isinstance(searcher, PruningOptunaSearch):
        searcher.open_study()
    return _Internals(searcher._ot_trials, searcher._ot_study, searcher._completed_trials)


class PruningOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial stopped before its full budget is PRUNED.

    Every result is an intermediate value of the Optuna trial (``trial.report(value, step)`` with
    the training iteration as step, as ``OptunaSearch`` does). When a trial ends it is COMPLETE if
    it ran its whole budget: the trainable flagged its last evaluation (``trial_complete``), it
    reached ``max_t``, or it ended by itself (the trainer's patience), which Tune shows by passing
    the last result a second time when a function trainable returns. Otherwise it was stopped
    (by ASHA, or the time budget) and is PRUNED, and Optuna takes its last intermediate value as
    its value; TPE then ranks it below completed trials, by how far it got. Either way the result
    the trial was stopped on, which Tune does not pass to ``on_trial_result``, is recorded first,
    so the intermediate values are every evaluation the trial reported. A trial that ended itself
    on a non-finite loss (``stop_reason``) is PRUNED too, its NaN the last intermediate value.
    """

    def __init__(self, *args: Any, max_t: int | None = None, sampler_kind: str | None = None,
                 sampler_options: dict[str, Any] | None = None, study: StudyRef | None = None,
                 **kwargs: Any):  # fmt: skip
        if study is not None:  # Ray creates the study there, or loads it if it exists
            kwargs.update(storage=study.storage(), study_name=study.name)
        super().__init__(*args, **kwargs)
        self._study_ref = study
        if study is not None and self._ot_study is not None:
            self._ot_study.set_user_attr(FOLDER_ATTR, study.folder)
        self._max_t = max_t
        # the tune.sampler kind and options the sampler was built with: how each trial was proposed
        self._sampler_kind, self._sampler_options = sampler_kind, dict(sampler_options or {})
        self._reported: dict[str, int] = {}  # trial id -> last step told to Optuna
        self._repeated: set[str] = set()  # trials whose last result came a second time: they returned

    def suggest(self, trial_id: str) -> dict | None:
        """Ray's suggestion, and on the Optuna trial a user attribute ``proposed_by`` saying how it was
        proposed: ``warm start`` (set when the point was enqueued), ``startup (random)`` while the
        sampler's startup lasts, else the sampler's kind (``search.engine.samplers.proposal``)."""
        new = trial_id not in _internals(self).trials
        config = super().suggest(trial_id)
        inside = _internals(self)
        kind = self.__dict__.get("_sampler_kind")  # absent from the state of searchers saved before
        if new and trial_id in inside.trials:
            inside.trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        if new and kind and trial_id in inside.trials:
            trial = inside.trials[trial_id]
            if PROPOSED_BY not in trial.user_attrs:
                trial.set_user_attr(PROPOSED_BY, proposal(kind, self._sampler_options, inside.study, trial.number))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._unknown(trial_id):
            return
        step = result.get(TRAINING_ITERATION)
        last = self._reported.get(trial_id)
        if step is not None and last is not None and step <= last:
            if step == last:
                self._repeated.add(trial_id)  # Tune's repeat of the last result: the trainable returned
            # else an evaluation counted again: a PBT recipient goes on from its donor's count, which
            # may be below its own; Optuna keeps the first value of each step
            return
        super().on_trial_result(trial_id, result)
        if trial_id not in _internals(self).completed:
            self._reported[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._unknown(trial_id):
            return
        inside = _internals(self)
        if (error or not result or trial_id in inside.completed
                or isinstance(self.metric, list) or result.get(self.metric) is None):  # fmt: skip
            return super().on_trial_complete(trial_id, result=result, error=error)
        step = result.get(TRAINING_ITERATION, 0)
        finished = not result.get(STOP_KEY) and (
            bool(result.get(COMPLETE_KEY)) or (self._max_t is not None and step >= self._max_t)
            or trial_id in self._repeated
        )  # fmt: skip
        ot_trial = inside.trials[trial_id]
        if self._reported.get(trial_id, 0) < step:  # the result the trial was stopped on
            ot_trial.report(result[self.metric], step)
            self._reported[trial_id] = step
        if finished:
            return super().on_trial_complete(trial_id, result=result, error=error)
        inside.study.tell(ot_trial, None, state=TrialState.PRUNED)
        inside.completed.add(trial_id)

    def _unknown(self, trial_id: str) -> bool:
        """A trial Optuna never proposed, in this searcher's state. Tune saves the trials' state first
        and the searcher's a moment later, so a search killed in between resumes a trial the saved
        searcher has not heard of (Ray's ``OptunaSearch`` then fails with a KeyError). It runs on;
        Optuna does not learn from it."""
        if trial_id in _internals(self).trials:
            return False
        ignored = self.__dict__.setdefault("_ignored", set())  # not in the state of searchers saved before
        if trial_id not in ignored:
            ignored.add(trial_id)
            logging.getLogger(__name__).warning(
                "trial %s is not in the Optuna study saved with the search (it was stopped between saving its "
                "trials and its study); the trial runs, but Optuna does not learn from it", trial_id)  # fmt: skip
        return True

    def study(self) -> Any:
        return _internals(self).study

    def study_ref(self) -> StudyRef | None:
        """Where the study is kept (None: in this searcher's state; searchers saved before had none)."""
        return self.__dict__.get("_study_ref")

    def point_at(self, ref: StudyRef) -> None:
        """Keep the study at ``ref`` from now on (a search folder moved with its study.db)."""
        self._study_ref, self._ot_study = ref, None

    def open_study(self) -> None:
        """Open the database study of a searcher restored from its saved state (nothing to do for one
        kept in memory, or opened already). The database, not the saved state, says which trials there
        are: the state is saved now and then, the database as each trial reports, so trials proposed or
        told after the state was last saved are known here (and not proposed or recorded twice)."""
        ref = self.study_ref()
        if ref is None or self._ot_study is not None:
            return
        self._storage = ref.storage()
        study = optuna.load_study(study_name=ref.name, storage=self._storage, sampler=self._sampler, pruner=NopPruner())
        recorded = tune_trial_ids(study)
        # a finished trial is never asked or told again: its FrozenTrial (which knows its number) stands for it
        self._ot_trials = {tid: t if t.state.is_finished() else optuna.Trial(study, t._trial_id)
                           for tid, t in recorded.items()}  # fmt: skip
        self._completed_trials = {tid for tid, t in recorded.items() if t.state.is_finished()}
        self._reported = {tid: max(t.intermediate_values) for tid, t in recorded.items() if t.intermediate_values}
        self._ot_study = study

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if state.get("_study_ref") is not None:  # where the study is, not a connection to it
            state.update(_ot_study=None, _storage=None, _ot_trials={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # a database study is opened at first use (open_study)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:  # Ray's own save pickles the study, its connection and all
            pickle.dump(self.__getstate__(), f)

    def optuna_trial(self, trial_id: str) -> Any:
        """The Optuna trial (a FrozenTrial) behind a Tune trial id, or None."""
        inside = _internals(self)
        trial = inside.trials.get(trial_id)
        if trial is None:
            return None
        return inside.study.trials[trial.number]


def new_searcher(space: Any, metric: str, mode: str, max_t: int, log: Any = print) -> PruningOptunaSearch:
    """The searcher of a new search over ``space``: the sampler ``tune.sampler`` asks for (the default
    TPE, ``search.space.sampler``), its study holding what ``tune.warm_start`` names (the earlier
    searches' trials, then the points, queued: ``search.engine.warm_start``), kept where
    ``tune.study_storage`` says (as the search folder's ``search.json`` records it)."""
    t = space.tune
    kind, options = sampler_options(t.sampler, t.num_samples, t.seed)
    # the storage the search folder's launch record names (``search.launch``): a searcher built for no
    # search folder (a benchmark's, a test's) keeps its study in memory
    ref = folder_ref(storage.folder_at(t.storage_path, t.name))
    if ref is not None:
        _clear_restarted(ref)
    searcher = PruningOptunaSearch(space=space.define_by_run, metric=metric, mode=mode,
                                   sampler=build_sampler(kind, options), max_t=max_t, sampler_kind=kind,
                                   sampler_options=options, study=ref)  # fmt: skip
    start_from(searcher.study(), space, saved_study, log)
    return searcher


def _clear_restarted(ref: StudyRef) -> None:
    """A search that starts again from the beginning in its folder (Tune saved nothing of its first
    start) starts a new study: the one its first start left is deleted. A study of that name from
    another folder is not touched (``search.launch`` refuses a new search whose name is taken)."""
    attrs = existing_study(ref)
    if attrs is None:
        return
    if ref.setting != DEFAULT and attrs.get(FOLDER_ATTR) != ref.folder:
        raise SearchError(f"tune.study_storage {ref.shown()} already holds a study named {ref.name!r}, of the search "
                          f"in {attrs.get(FOLDER_ATTR, 'an unknown folder')}")  # fmt: skip
    optuna.delete_study(study_name=ref.name, storage=ref.storage())


def load_searcher(experiment: str | Path) -> PruningOptunaSearch | None:
    """The searcher's state as Tune last saved it in the search folder (None if there is none).
    The file is the search's own state (Tune pickles it), not user data."""
    searcher = PruningOptunaSearch()
    try:
        searcher.restore_from_dir(str(experiment))
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, ImportError, pickle.UnpicklingError):
        return None  # none saved yet, or a file cut short by a killed search: no Optuna states to show
    return searcher


def saved_study(experiment: str | Path) -> Any:
    """The Optuna study of a search folder: from its database, else from the searcher's saved state
    (None before that is first saved)."""
    study = load_folder_study(experiment)
    if study is not None:
        return study
    searcher = _memory_searcher(experiment)
    return searcher.study() if searcher is not None else None


def _memory_searcher(experiment: str | Path) -> PruningOptunaSearch | None:
    """The saved searcher of a folder whose study is in that state (None for one whose study is in a
    database that could not be read: reading is not retried through it)."""
    searcher = load_searcher(experiment)
    return searcher if searcher is not None and searcher.study_ref() is None else None


def _recorded(experiment: str | Path) -> dict[str, Any] | None:
    """``{Tune trial id: FrozenTrial}`` of the study in the folder's database, None without one."""
    study = load_folder_study(experiment)
    return tune_trial_ids(study) if study is not None else None


def proposals(experiment: str | Path) -> dict[str, str]:
    """``{Tune trial id: how Optuna proposed it}`` (the ``proposed_by`` user attribute: ``warm start``,
    ``startup (random)``, ``tpe``, ...) of the trials the saved study knows; empty when none is saved."""
    recorded = _recorded(experiment)
    if recorded is not None:
        return {tid: str(t.user_attrs[PROPOSED_BY]) for tid, t in recorded.items() if PROPOSED_BY in t.user_attrs}
    searcher = _memory_searcher(experiment)
    if searcher is None:
        return {}
    found = {}
    for trial_id in _internals(searcher).trials:
        ot = searcher.optuna_trial(trial_id)
        if ot is not None and PROPOSED_BY in ot.user_attrs:
            found[trial_id] = str(ot.user_attrs[PROPOSED_BY])
    return found


def optuna_states(experiment: str | Path) -> dict[str, str | None] | None:
    """``{Tune trial id: Optuna state name}`` (COMPLETE, PRUNED, FAIL, RUNNING) of every trial the saved
    study knows, None when no study is saved."""
    recorded = _recorded(experiment)
    if recorded is not None:
        return {tid: t.state.name for tid, t in recorded.items()}
    searcher = _memory_searcher(experiment)
    if searcher is None:
        return None
    states = {}
    for trial_id in _internals(searcher).trials:
        ot = searcher.optuna_trial(trial_id)
        states[trial_id] = ot.state.name if ot is not None else None
    return states


def param_importances(study: Any) -> dict[str, float] | str:
    """``{parameter: importance}`` from Optuna's default evaluator (PED-ANOVA) over the study's
    completed trials, most important first, or a sentence saying why there are none (no study, too
    few completed trials, one dimension). Parameters are named by their dotted keys (``key#i`` for
    alternative ``i`` of a key)."""
    if study is None:
        return "Parameter importance needs the Optuna study, and the search folder holds none yet."
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return (f"Parameter importance is not shown: it needs at least {MIN_IMPORTANCE_TRIALS} completed trials "
                f"and this search has {len(complete)}.")  # fmt: skip
    params = {p for t in complete for p, d in t.distributions.items() if not d.single()}
    if len(params) < 2:
        return f"Parameter importance is not shown: the completed trials vary {len(params)} dimension(s)."
    with warnings.catch_warnings():  # its warnings (ties, few trials) would go to the console, not the report
        warnings.simplefilter("ignore")
        raw = optuna.importance.get_param_importances(study)
    return {p: float(v) for p, v in raw.items()}
