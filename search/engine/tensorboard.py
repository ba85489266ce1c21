"""TensorBoard files of a search: one run per trial, curves of every reported metric, and an
HParams summary so the trials compare side by side.

Tags are ``<group>/<metric key>``, the key exactly as the trainer reports it:

    dev/<key>     dev metrics on the selection subset: sst_acc, para_acc, para_f1, sts_pearson,
                  sts_spearman, overall (and cfimdb_acc with data.extra_sst)
    train/<key>   train_loss_<task>, lr, epoch, phase, train_samples_per_s, train_seconds
    grad/<key>    grad_cos_<a>_<b>, grad_conflict_frac (with grad.diagnose_every > 0)
    other/<key>   anything else the trainer adds

The x axis is the global training step (the ``step`` metric), so trials line up by steps whatever
their evaluation interval. Under PBT (``tune.scheduler: pbt``) a trial also shows the values it
trains with at each evaluation (``pbt/<dotted key>``, one per mutated setting: the schedule PBT
found, stepping where it exploited another trial) and each exploit as text (``pbt/exploit``: the
donor and its step, the values before and after; ``search.lineage.exploit_text``). The HParams run lists the trial's sampled settings under their dotted
keys (``optim.lr``) with their real values, and the search metric's tag (``dev/overall``) as its
metric. ``TrialBoard`` writes one trial's files; ``TensorBoardCallback`` feeds it from Tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback

DEV_METRICS = ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall", "cfimdb_acc")
STEP_KEY = "step"
# Keys Tune adds to every result; the rest came from the trainable.
TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "timestamp", "date", "hostname", "node_ip",
    "pid", "config", "done", "trial_id", "experiment_id", "experiment_tag", "checkpoint_dir_name",
    "should_checkpoint", "__duplicate__",
})  # fmt: skip


def tag_for(key: str) -> str:
    """The TensorBoard tag of a reported metric."""
    if key in DEV_METRICS:
        return f"dev/{key}"
    if key.startswith("grad_"):
        return f"grad/{key}"
    if key.startswith("train_") or key in ("lr", "epoch", "phase"):
        return f"train/{key}"
    return f"other/{key}"


def scalars(result: dict[str, Any]) -> dict[str, float]:
    """A result's numbers under their tags: Tune's own keys, the step (the x axis), wall-clock
    timestamps (``*_at``) and flags left out. What every tracker logs of an evaluation."""
    return {tag_for(k): float(v) for k, v in result.items()
            if k not in TUNE_KEYS and k != STEP_KEY and not k.endswith("_at")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip


def trial_settings(space: Any, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings under their dotted keys with their real values (its raw Tune config when
    the space cannot decode it: the retraining grid's); the rule of ``search.results.decoded``."""
    try:
        return space.decode(config)
    except (ValueError, KeyError):
        return dict(config)


def pbt_mutated(space: Any) -> set[str]:
    """The settings PBT mutates (none under other schedulers)."""
    s = getattr(space.tune, "scheduler", None)
    return set(s.mutations or ()) if s is not None and s.kind == "pbt" else set()


def pbt_values(space: Any, config: dict[str, Any]) -> dict[str, float]:
    """Under PBT (``tune.scheduler: pbt``), the values a trial trains with now: ``pbt/<dotted key>``
    for each mutated setting, so the schedule PBT found shows as curves; empty under other schedulers."""
    mutated = pbt_mutated(space)
    if not mutated:
        return {}
    return {f"pbt/{k}": float(v) for k, v in trial_settings(space, config).items()
            if k in mutated and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip


def hparam_value(value: Any) -> bool | int | float | str:
    # The HParams plugin takes numbers, booleans and strings; a list (hidden sizes) shows as text.
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class TrialBoard:
    """The event files of one trial, written into its directory."""

    def __init__(self, directory: str | Path, hparams: dict[str, Any], metric: str):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.writer = SummaryWriter(str(directory), flush_secs=10)
        experiment, start, self._end = hparams_summary(
            {k: hparam_value(v) for k, v in hparams.items()}, {tag_for(metric): 0.0}
        )
        # Written at the start, not the end, so running trials show in the HParams table too.
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def log(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Write one evaluation's numbers at its global step; returns ``{tag: value}`` written."""
        step = int(metrics.get(STEP_KEY, 0))
        written = scalars(metrics)
        for tag, value in written.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()
        return written

    def log_values(self, values: dict[str, Any], step: int) -> dict[str, float]:
        """Write numbers under their own tags at global ``step`` (PBT's settings: ``pbt/optim.lr``)."""
        written = {tag: float(v) for tag, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip
        for tag, value in written.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()
        return written

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.file_writer.add_summary(self._end)
        self.writer.close()


class TensorBoardCallback(LoggerCallback):
    """Writes each trial's TensorBoard run (``TrialBoard``) into the trial's folder under
    the storage path, as results arrive, so ``tensorboard --logdir <storage_path>/<name>`` shows the
    running search. Tune adds no TBXLoggerCallback of its own beside it (a second set of
    ``ray/tune/*`` tags in the same folders, and a start-up line naming the wrong folder):
    ``search.engine.session.ray_session`` turns Tune's automatic loggers off."""

    def __init__(self, space: Any, metric: str):
        self._space, self._metric = space, metric
        self._boards: dict[str, TrialBoard] = {}

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the run config
        return {"_space": self._space, "_metric": self._metric, "_boards": {}}

    def _pbt_start(self, trial: Any) -> None:
        """The exploits in the trial's lineage not yet written, as text at the step each went on
        from (``pbt/exploit``): a trial is started again after each exploit."""
        from search.engine.schedulers import read_lineage_at, trial_location
        from search.lineage import exploit_text

        seen = self.__dict__.setdefault("_lineage_seen", {})
        entries = read_lineage_at(*trial_location(trial))
        for entry in entries[seen.get(trial.trial_id, 0) :]:
            self._boards[trial.trial_id].log_text("pbt/exploit", exploit_text(entry), int(entry.get("donor_step") or 0))
        seen[trial.trial_id] = len(entries)

    def log_trial_start(self, trial: Any) -> None:
        if trial.trial_id in self._boards:
            self._boards.pop(trial.trial_id).close()
        directory = trial.path if trial.storage.storage_filesystem.type_name == "local" else trial.local_path
        self._boards[trial.trial_id] = TrialBoard(directory, trial_settings(self._space, trial.config), self._metric)
        if pbt_mutated(self._space):
            self._pbt_start(trial)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial.trial_id not in self._boards:
            self.log_trial_start(trial)
        self._boards[trial.trial_id].log(result)
        values = pbt_values(self._space, trial.config)  # PBT: the values the trial runs with now
        if values:
            self._boards[trial.trial_id].log_values(values, int(result.get(STEP_KEY, 0)))

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        board = self._boards.pop(trial.trial_id, None)
        if board:
            board.close()
