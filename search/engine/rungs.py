"""ASHA whose rungs survive ``mtbert-search resume``.

Ray Tune saves and restores a search's searcher, but brings its scheduler back from ``tuner.pkl``
as it was built, empty (ray-project/ray #30838): a resumed search's first trials then meet empty
rungs and go on where the interrupted search would have stopped them. ``ResumableASHA`` is Ray's
``ASHAScheduler`` (same arguments, same decisions) that keeps what decides its stops in
``asha-rungs.json``, and reads it back the first time the restored scheduler sees a trial. The file
is rewritten (a temporary file renamed over it) whenever the state changes, in the experiment's
staging folder on the driver, where Tune keeps the searcher's state: Tune uploads that folder to the
search folder (local or object storage) with every experiment state it saves, and downloads its
``*.json`` back on restore. (A file written into the search folder directly is overwritten there by
the staging copy Tune downloaded when it restored.) The state on storage is therefore as recent as
Tune's own saved state, or more. It holds:

- each bracket's rungs: milestone -> {trial id: the value recorded there}, in the order recorded.
  Values are as ASHA compares them: the metric, negated when ``mode`` is ``min``; a value that is
  not finite is written as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (the file is strict JSON);
- the bracket of each trial (Ray draws it when a trial is added; a trial added again, after a resume
  or a retry, keeps its bracket);
- the decision taken on each result that recorded a rung value (``{trial id: {time: "STOP" |
  "CONTINUE"}}``): a trial that goes on from a checkpoint older than its last result reports those
  evaluations again, and gets the decision it got the first time, with nothing recorded twice;
- the number of trials stopped (Ray's ``debug_string``).

At the first result after a resume, the values and decisions of trials Tune did not bring back (they
started after its last saved state, or errored and restart under new ids) are dropped.

With one bracket (the search's setting) a resumed search stops exactly the trials the uninterrupted
one would have stopped on the same results. With several, the trials it knows keep their brackets;
new ones are drawn as Ray draws them, from numpy's global random state, which a resume does not
carry over.

The staging folder is found from the trial (``trial.storage``). A search started again from scratch
in its folder (Tune had saved nothing) drops an earlier file first (``forget``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

STATE_FILE = "asha-rungs.json"
VERSION = 1
logger = logging.getLogger(__name__)


def _number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _value(saved: float | str) -> float:
    return float(saved)


class ResumableASHA(ASHAScheduler):
    """``ASHAScheduler`` whose state is kept in ``<experiment>/asha-rungs.json``: see the module doc."""

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None,
                 max_t: int = 100, grace_period: int = 1, reduction_factor: float = 4, brackets: int = 1,
                 stop_last_trials: bool = True) -> None:  # fmt: skip
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets,
                         stop_last_trials=stop_last_trials)  # fmt: skip
        self._settings = {
            "time_attr": time_attr, "max_t": max_t, "grace_period": grace_period,
            "reduction_factor": reduction_factor, "brackets": brackets, "stop_last_trials": stop_last_trials,
        }  # fmt: skip
        self._bracket_of: dict[str, int] = {}
        self._decisions: dict[str, dict[str, str]] = {}
        self._where: Path | None = None  # the experiment's staging folder, from the first trial seen
        self._written: str | None = None
        self._added_since_load: set[str] | None = None  # trials Tune added since a saved state was read

    # ---- Tune's hooks ----------------------------------------------------------------------------

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._attach(trial)
        if self._added_since_load is not None:
            self._added_since_load.add(trial.trial_id)
        known = self._bracket_of.get(trial.trial_id)
        if known is not None and known < len(self._brackets):
            self._trial_info[trial.trial_id] = self._brackets[known]
        else:
            super().on_trial_add(tune_controller, trial)
            bracket = self._trial_info[trial.trial_id]
            self._bracket_of[trial.trial_id] = next(i for i, b in enumerate(self._brackets) if b is bracket)
        self._save()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._attach(trial)
        self._drop_gone()
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        key = self._time_key(result[self._time_attr])
        decided = self._decisions.get(trial.trial_id, {}).get(key)
        if decided is not None:  # a result reported again after a resume: the decision it got then
            return decided
        before = self._recorded(trial.trial_id)
        action = super().on_trial_result(tune_controller, trial, result)
        if self._recorded(trial.trial_id) != before:
            self._decisions.setdefault(trial.trial_id, {})[key] = action
            self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._attach(trial)
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    # ---- the state file -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What decides this scheduler's stops, as written to ``asha-rungs.json``."""
        return {
            "scheduler": "asha", "version": VERSION,
            "settings": {"metric": self._metric, "mode": self._mode, **self._settings},
            "num_stopped": self._num_stopped,
            "brackets": [
                {"rungs": [{"milestone": milestone, "recorded": {t: _number(v) for t, v in recorded.items()}}
                           for milestone, recorded in bracket._rungs]}
                for bracket in self._brackets
            ],
            "trial_brackets": dict(self._bracket_of),
            "decisions": {t: dict(d) for t, d in self._decisions.items()},
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        """Take over a saved ``state()``; ``ValueError`` when it belongs to another scheduler."""
        mine = {"metric": self._metric, "mode": self._mode, **self._settings}
        theirs = state.get("settings")
        if state.get("scheduler") != "asha" or state.get("version") != VERSION or theirs != mine:
            raise ValueError(f"saved for another scheduler ({theirs}; this one: {mine})")
        brackets = state["brackets"]
        milestones = [[m for m, _ in b._rungs] for b in self._brackets]
        if [[r["milestone"] for r in b["rungs"]] for b in brackets] != milestones:
            raise ValueError("its rungs are at other milestones")
        for bracket, saved in zip(self._brackets, brackets):
            for (_, recorded), rung in zip(bracket._rungs, saved["rungs"]):
                recorded.clear()
                recorded.update({t: _value(v) for t, v in rung["recorded"].items()})
        self._num_stopped = int(state["num_stopped"])
        self._bracket_of = {str(t): int(i) for t, i in state["trial_brackets"].items()}
        self._decisions = {str(t): {str(k): str(a) for k, a in d.items()} for t, d in state["decisions"].items()}

    def _attach(self, trial: Any) -> None:
        """On the first trial seen: where the state file is, and the state a resumed search saved there."""
        if self._where is not None:
            return
        self._where = experiment_location(trial)
        text = _read(self._where)
        if text is None:
            return
        try:
            self.load_state(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("%s: not used, ASHA starts with empty rungs: %s", self._where / STATE_FILE, e)
            return
        self._written = text
        self._added_since_load = set()

    def _drop_gone(self) -> None:
        """At the first result after a resume, when Tune has added back every trial it restored: the
        rung values and decisions of trials it did not restore (started after its last saved state,
        or errored ones it restarts under new ids) are dropped, as no trial of the search holds them."""
        if self._added_since_load is None:
            return
        kept, self._added_since_load = self._added_since_load, None
        for bracket in self._brackets:
            for _, recorded in bracket._rungs:
                for trial_id in [t for t in recorded if t not in kept]:
                    del recorded[trial_id]
        self._bracket_of = {t: i for t, i in self._bracket_of.items() if t in kept}
        self._decisions = {t: d for t, d in self._decisions.items() if t in kept}
        self._save()

    def _save(self) -> None:
        if self._where is None:
            return
        text = json.dumps(self.state(), indent=1, allow_nan=False)
        if text != self._written:
            _write(self._where, text)
            self._written = text

    def _recorded(self, trial_id: str) -> int:
        return sum(trial_id in recorded for bracket in self._brackets for _, recorded in bracket._rungs)

    @staticmethod
    def _time_key(value: Any) -> str:
        return json.dumps(value)

    def __getstate__(self) -> dict[str, Any]:
        # a copy (tuner.pkl) is of the scheduler as built: it finds its folder and state when it runs
        return {**self.__dict__, "_where": None, "_written": None, "_added_since_load": None}


# ---- where the file lives ------------------------------------------------------------------------------


def experiment_location(trial: Any) -> Path:
    """The driver's staging folder of the trial's experiment: where Tune keeps the searcher's state,
    uploads to the search folder (local or object storage) with each experiment state it saves, and
    downloads from it on restore (``Tuner.restore`` gets every ``*.json`` of the search folder back)."""
    storage = getattr(trial, "storage", None)
    staging = getattr(storage, "experiment_driver_staging_path", None)
    return Path(staging) if staging else Path(trial.local_experiment_path)


def _read(folder: Path) -> str | None:
    path = folder / STATE_FILE
    return path.read_text() if path.is_file() else None


def _write(folder: Path, text: str) -> None:
    """Written whole or not at all: a temporary file beside it, renamed over it."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / STATE_FILE)


def forget(experiment: str | Path) -> None:
    """Drop the ASHA state of a search folder whose search starts again from the beginning (its
    trials get new ids; the old rung values are no one's)."""
    Path(experiment, STATE_FILE).unlink(missing_ok=True)


def read_state(experiment: str | Path) -> dict[str, Any] | None:
    """The ASHA state saved in a search folder, or None."""
    path = Path(experiment, STATE_FILE)
    return json.loads(path.read_text()) if path.is_file() else None
