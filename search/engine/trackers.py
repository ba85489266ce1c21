"""MLflow and Weights & Biases runs of a search (``tune.trackers``, read by ``search.space.trackers``):
one parent run per search and one child run per trial (``search.engine.tracker_runs``, where each
option's default is), fed by a Tune callback as results arrive, and completed by ``log_final`` with
the final pick once the search has ended.

A trial's run holds its sampled settings under their dotted keys (``optim.lr``, real values), every
evaluation under the TensorBoard tags (``dev/overall``, ``train/lr``, ...; under PBT the values it
trains with, ``pbt/optim.lr``; ``search.engine.tensorboard``) at the trainer's global step,
``best_checkpoint`` (the path of its best checkpoint by the search metric) and, for the finalists,
their ``full_dev/<metric>`` scores. The parent run holds the search's settings, then the best trial
(``best_trial``, ``best_checkpoint``) and its ``selection/<metric>``, ``full_dev/<metric>`` (and
``report_half/<metric>`` with ``data.dev_holdout``) scores. The parent run ends when Tune's run
ends (KILLED after a Ctrl-C); the final pick is added to it after.

The run ids are kept in ``<search folder>/trackers.json``, so ``mtbert-search resume`` goes on in the
same parent run and the same trial runs. A tracker that fails while the search runs (its server went
away, its files cannot be written: the library's own errors) is dropped with one warning: the search
goes on. Any other exception is a bug, and is raised.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback

from mtbert.evaluate import is_score, strict_json
from search import storage
from search.engine.rungs import experiment_location
from search.engine.tensorboard import STEP_KEY, pbt_values, scalars, trial_settings
from search.engine.tracker_runs import KINDS, Tracker

TRACKERS_FILE = "trackers.json"
CHECKPOINT_KEY = "checkpoint_dir_name"  # in a result that came with a checkpoint (Tune's)


def folders_of(trial: Any, space: Any) -> list[Path]:
    """Where ``trackers.json`` is written: the search folder (with local storage; with a URI, its
    working copy on this machine, which ``search.storage`` sends up), then the driver's staging copy
    of it (``rungs.experiment_location``). The staging copy because Tune uploads it over the search
    folder with each state it saves (a file only in the folder would be overwritten by a stale copy);
    the folder too because the ids must outlive a kill before Tune's first save. The first is where
    MLflow's default store goes, and names the parent run."""
    import ray

    staging = [experiment_location(trial)] if ray.is_initialized() else []
    where = trial.storage
    if where.storage_filesystem.type_name == "local":
        return [Path(where.experiment_fs_path), *staging]
    t = space.tune
    return [storage.folder_at(t.storage_path, t.name), *staging]


def read_ids(folder: Path) -> dict[str, Any]:
    path = folder / TRACKERS_FILE
    if not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        ids = None
        print(f"warning: {path} cannot be read ({e}); the trackers' runs start again", file=sys.stderr, flush=True)
    return ids if isinstance(ids, dict) else {}


def write_ids(folder: Path, ids: dict[str, Any]) -> None:
    """Whole or not at all (as ``search.summary.write_json``, which the engine cannot import)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{TRACKERS_FILE}.partial"
    partial.write_text(strict_json(ids, indent=2))
    os.replace(partial, folder / TRACKERS_FILE)


def search_params(space: Any) -> dict[str, str]:
    """The parent run's settings: how the search ran and which settings it searched."""
    t = space.tune
    searched = dict.fromkeys(d.key for d in getattr(space, "dimensions", ()))
    return {"tune.metric": t.metric, "tune.mode": t.mode, "tune.num_samples": str(t.num_samples),
            "tune.scheduler": t.scheduler.kind, "tune.sampler": (t.sampler or {}).get("kind", "tpe"),
            "searched": ", ".join(searched)}  # fmt: skip


def warn(kind: str, error: BaseException) -> None:
    print(f"warning: tune.trackers: {kind} failed ({type(error).__name__}: {error}); no more is logged to it "
          "in this run, the search goes on", file=sys.stderr, flush=True)  # fmt: skip


def open_trackers(trackers: list[dict[str, Any]] | None, folder: Path) -> tuple[dict[str, Any], dict[str, Tracker]]:
    """The trackers of ``trackers`` (TensorBoard aside) for the search in ``folder``, with the ids file's content."""
    ids = read_ids(folder)
    opened = {}
    for t in trackers or ():
        kind = KINDS.get(t["kind"])
        if kind is not None:
            try:
                opened[t["kind"]] = kind(t, folder, ids.setdefault(t["kind"], {}))
            except kind.errors() as e:  # a store that cannot be opened: the others still log
                warn(t["kind"], e)
    return ids, opened


@dataclass
class _Live:
    """The callback's state in the driver, from the first trial it sees."""

    copies: list[Path]  # where trackers.json is written
    ids: dict[str, Any]
    open: dict[str, Tracker]
    best: dict[str, float] = field(default_factory=dict)  # each trial's best value of the metric in this driver
    running: set[str] = field(default_factory=set)


class TrackersCallback(LoggerCallback):
    """Feeds the MLflow and W&B runs of a search from Tune's events, in the driver."""

    def __init__(self, space: Any, metric: str, trackers: list[dict[str, Any]]):
        self._space, self._metric, self._trackers = space, metric, trackers
        self._live: _Live | None = None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the run config; clients are made again
        return {"_space": self._space, "_metric": self._metric, "_trackers": self._trackers, "_live": None}

    def _each(self, live: _Live, method: str, *args: Any, save: bool = False) -> None:
        for kind, tracker in list(live.open.items()):
            try:
                getattr(tracker, method)(*args)
            except tracker.errors() as e:  # a server gone must not end a search of hours
                warn(kind, e)
                live.open.pop(kind)
        if save:  # new run ids: kept for a resume
            for folder in live.copies:
                write_ids(folder, live.ids)

    def _started(self, trial: Any) -> _Live:
        """The parent runs, at the first trial the driver sees (the folder is known from it)."""
        if self._live is None:
            copies = folders_of(trial, self._space)
            ids, opened = open_trackers(self._trackers, copies[0])
            self._live = _Live(copies, ids, opened)
            self._each(self._live, "start_search", copies[0].name, search_params(self._space), save=True)
        return self._live

    def log_trial_start(self, trial: Any) -> None:
        live = self._started(trial)
        live.running.add(trial.trial_id)
        self._each(live, "start_trial", trial.trial_id, f"trial_{trial.trial_id}",
                   trial_settings(self._space, trial.config), str(trial.path), save=True)  # fmt: skip

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if self._live is None or trial.trial_id not in self._live.running:
            self.log_trial_start(trial)  # a trial the driver did not see start
        live = self._started(trial)
        values = {**scalars(result), **pbt_values(self._space, trial.config)}
        self._each(live, "log", trial.trial_id, values, int(result.get(STEP_KEY, 0)))
        value, best = result.get(self._metric), live.best.get(trial.trial_id)
        sign = 1 if self._space.tune.mode == "max" else -1
        if is_score(value) and (best is None or sign * (value - best) > 0):
            live.best[trial.trial_id] = value
            if result.get(CHECKPOINT_KEY):  # corrected from the results by log_final (a resume forgets ``best``)
                path = Path(trial.path) / result[CHECKPOINT_KEY]
                self._each(live, "tag", trial.trial_id, {"best_checkpoint": path}, save=True)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if self._live is not None:
            self._live.running.discard(trial.trial_id)
            self._each(self._live, "end_trial", trial.trial_id, failed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:
            interrupted = any(t.status not in ("TERMINATED", "ERROR") for t in trials)
            self._each(self._live, "end_search", interrupted)


def numbers(scores: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in (scores or {}).items() if is_score(v) and not isinstance(v, bool)}


def log_final(experiment: Path, summary: dict[str, Any], space: Any, results: Any, log: Any = print) -> None:
    """The final pick of a search that has ended (``summary``, ``search.summary``'s) in its tracker
    runs: each trial's ``best_checkpoint`` and states from ``results`` (``search.results.SearchResults``)
    with no run left running, each finalist's ``full_dev/<metric>`` and ``final_rank``, the best trial
    on the parent run, which then ends again. A tracker that fails here is a warning: the summary is
    written already."""
    trackers = [t for t in getattr(getattr(space, "tune", None), "trackers", None) or () if t["kind"] in KINDS]
    if not trackers:
        return
    experiment = Path(experiment)
    ids, opened = open_trackers(trackers, experiment)
    best = summary.get("best") or {}
    steps = {t.trial_id: int((t.best or {}).get(STEP_KEY) or 0) for t in results.trials}
    report = (summary.get("report_half") or {}).get("report")
    done = []
    for kind, tracker in opened.items():
        try:
            if "parent" not in tracker.ids:  # no trial ever started under this tracker
                tracker.start_search(experiment.name, search_params(space))
            tracker.settle(results.trials)
            for rank, f in enumerate(summary.get("finalists") or [], 1):
                tags = {"final_rank": rank, "selection_rank": f["selection_rank"], "best_checkpoint": f["checkpoint"]}
                tracker.final(f["trial_id"], numbers(f.get("full_dev"), "full_dev"), tags, steps.get(f["trial_id"], 0))
            if best:
                scores = {**numbers(best.get("selection"), "selection"), **numbers(best.get("full_dev"), "full_dev"),
                          **numbers(report, "report_half")}  # fmt: skip
                tags = {"best_trial": best["trial_id"], "best_checkpoint": best["checkpoint"],
                        "best_config": best["config"], "rank_rule": summary.get("rank_rule")}  # fmt: skip
                tracker.final(None, scores, tags, int(best.get("step") or 0))
            tracker.finish([p for p in (experiment / "summary.json", experiment / "space.yaml") if p.is_file()])
            done.append(kind)
        except tracker.errors() as e:  # the summary is written: a tracker's failure is a warning
            warn(kind, e)
    try:
        write_ids(experiment, ids)
    except OSError as e:  # only a later resume would need the ids: a warning too
        print(f"warning: tune.trackers: {experiment / TRACKERS_FILE} cannot be written ({e})", file=sys.stderr)
    if done:
        log(f"trackers: the final pick is logged to {', '.join(done)}")
