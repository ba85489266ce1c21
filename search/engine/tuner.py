"""The Tuner of a search: Optuna's TPE proposes run configs (``searcher``), the scheduler of
``tune.scheduler`` stops weak trials early or has them exploit better ones (``schedulers``), Ray
Tune runs them (``trainable``); built new, or restored from a search folder, and fitted inside a
Ray session with Ctrl-C handled (``interrupt``).

``run_new`` and ``run_restored`` are what ``search.launch`` calls; ``build_trainable``,
``run_config`` and ``restore_tuner`` are shared with the retraining grid (``search.engine.retrain``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import ConcurrencyLimiter

from search import storage
from search.engine.interrupt import fit, stop_on_sigint
from search.engine.retention import KeepRestorable, drop_kept, restore_kept
from search.engine.rungs import forget
from search.engine.schedulers import build_scheduler
from search.engine.searcher import new_searcher
from search.engine.session import alive_nodes, ray_session, set_progress_metrics
from search.engine.tensorboard import TensorBoardCallback
from search.engine.trackers import TrackersCallback
from search.engine.trainable import TrialSetup, run_trial, share
from search.space.trackers import kinds

# The columns of Tune's progress table.
PROGRESS_METRICS = ("overall", "sst_acc", "para_acc", "sts_pearson", "step", "train_samples_per_s")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def max_t(space: Any) -> int:
    """ASHA's budget: evaluations per trial."""
    return space.tune.max_t or space.max_evaluations()


def can_restore(folder: str | Path) -> bool:
    """Whether ``folder`` (or the storage of a working copy) holds a Tune run that ``Tuner.restore`` can continue."""
    return tune.Tuner.can_restore(storage.tune_path(folder))


def build_trainable(setup: TrialSetup, refs: dict[str, Any], fn: Any = run_trial, **kwargs: Any) -> Any:
    """``fn`` (``run_trial``, or a function that calls it) as a Tune trainable with the space's
    resources per trial; ``kwargs`` go to ``fn`` with ``setup`` and ``data``."""
    t = setup.space.tune
    resources = {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial or 0}
    trainable = tune.with_resources(tune.with_parameters(fn, setup=setup, data=refs, **kwargs), resources)
    set_progress_metrics(trainable, PROGRESS_METRICS)
    return trainable


def run_config(space: Any, name: str, storage_path: str | Path, callbacks: tuple = (), *, tracked: bool = True) -> Any:
    """Tune's RunConfig for the trials of ``space``: checkpoints kept by the search metric (and the
    one a resume needs, ``KeepRestorable``), retries, TensorBoard; MLflow and W&B runs unless not
    ``tracked`` (the retraining grid: no search of its own to log)."""
    t = space.tune
    return tune.RunConfig(
        name=name, storage_path=str(storage_path), verbose=1,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=t.keep_checkpoints, checkpoint_score_attribute=t.metric, checkpoint_score_order=t.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=t.max_failures),
        # Tune's automatic loggers are off (session.ray_session): the CSV and JSON ones the results
        # are read from are named here; TensorBoard, MLflow and W&B are the search's own (tune.trackers)
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), *tracker_callbacks(space, tracked), KeepRestorable(),
                   PushOwnFiles(space), *callbacks],
    )  # fmt: skip


class PushOwnFiles(tune.Callback):
    """With a URI ``tune.storage_path``: the files the search writes itself in its working copy (the
    study database, ASHA's rungs, ...) sent to the storage every ``PERIOD_S`` and at the end
    (``search.storage.push``), as Tune sends its own."""

    PERIOD_S = 30.0

    def __init__(self, space: Any):
        t = space.tune
        self.folder = storage.folder_at(t.storage_path, t.name) if storage.is_uri(t.storage_path) else None
        self.last = time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.folder is not None and time.monotonic() - self.last >= self.PERIOD_S:
            storage.push(self.folder)
            self.last = time.monotonic()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.folder is not None:
            storage.push(self.folder)


def tracker_callbacks(space: Any, tracked: bool = True) -> list[Any]:
    """The callbacks of ``tune.trackers``: TensorBoard's (the default), and one for MLflow and W&B
    (if ``tracked``)."""
    t = space.tune
    named = kinds(getattr(t, "trackers", None))
    found = [TensorBoardCallback(space, t.metric)] if "tensorboard" in named else []
    if tracked and set(named) - {"tensorboard"}:
        found.append(TrackersCallback(space, t.metric, t.trackers))
    return found


def restore_tuner(experiment: Path, trainable: Any, log: Any = print) -> Any:
    """The Tuner of an interrupted Tune run in ``experiment``: unfinished trials continue from their
    last checkpoints (put back from the kept copies where Tune had deleted them), errored ones restart."""
    for path in restore_kept(experiment):
        log(f"{path.parent.name}: its latest checkpoint was deleted after the search's state was saved; "
            f"continuing from the copy kept for this ({path.name})")  # fmt: skip
    return tune.Tuner.restore(storage.tune_path(experiment), trainable=trainable, resume_unfinished=True,
                              restart_errored=True)  # fmt: skip


def build_tuner(space: Any, setup: TrialSetup, refs: dict[str, Any], callbacks: tuple = ()) -> Any:
    t = space.tune
    budget = max_t(space)
    searcher = new_searcher(space, t.metric, t.mode, budget)
    scheduler = build_scheduler(space, budget)  # tune.scheduler: ASHA, HyperBand, FIFO or PBT
    return tune.Tuner(
        build_trainable(setup, refs),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=t.max_concurrent) if t.max_concurrent else searcher,
            scheduler=scheduler,
            num_samples=t.num_samples, time_budget_s=t.time_budget_s,
            # the worker process, its imports and the shared data stay between trials
            reuse_actors=True, trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(space, t.name, t.storage_path, callbacks),
    )  # fmt: skip


def run_new(space: Any, setup: TrialSetup, data: dict[str, Any], experiment: Path, *, address: str | None = None,
            log: Any = print, before: Any = None) -> None:  # fmt: skip
    """A new search in ``experiment`` (``<tune.storage_path>/<tune.name>``), run to its end; ``before()``
    once Ray runs and the storage suits it (``check_for_cluster``), before the first trial."""
    with stop_on_sigint(log) as ctrl_c:
        with ray_session(address):
            storage.check_for_cluster(space.tune.storage_path, alive_nodes(), space.tune.storage_shared)
            if before is not None:
                before()
            storage.push(experiment)
            try:
                fit(build_tuner(space, setup, share(data)), ctrl_c, experiment)
            finally:
                storage.pull(experiment)  # what Tune wrote to the storage, for the summary and the commands
        ctrl_c.check(experiment)
    drop_kept(experiment)  # only when it ended: an interrupted search's resume may need the kept copies


def run_restored(experiment: Path, space: Any, setup: TrialSetup, data: dict[str, Any], *, saved: bool,
                 address: str | None = None, tune_loggers: bool = False, log: Any = print) -> None:  # fmt: skip
    """Continue the search in ``experiment`` from Tune's saved state (``saved``), or start it again
    in the same folder when Tune saved none."""
    with stop_on_sigint(log) as ctrl_c:
        with ray_session(address, tune_loggers=tune_loggers and saved):
            storage.check_for_cluster(space.tune.storage_path, alive_nodes(), space.tune.storage_shared)
            refs = share(data)
            if saved:
                tuner = restore_tuner(experiment, build_trainable(setup, refs), log)
            else:
                log(f"{experiment}: the search was stopped before Tune saved its state; starting it from the "
                    "beginning")  # fmt: skip
                forget(experiment)  # rung values of trials that will not come back
                tuner = build_tuner(space, setup, refs)
            try:
                fit(tuner, ctrl_c, experiment)
            finally:
                storage.pull(experiment)
        ctrl_c.check(experiment)
    drop_kept(experiment)
