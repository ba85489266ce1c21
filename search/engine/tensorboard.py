"""TensorBoard files of a search: one run per trial, curves of every reported metric, and an
HParams summary so the trials compare side by side.

Tags are ``<group>/<metric key>``, the key exactly as the trainer reports it:

    dev/<key>     dev metrics on the selection subset: sst_acc, para_acc, para_f1, sts_pearson,
                  sts_spearman, overall (and cfimdb_acc with data.extra_sst)
    train/<key>   train_loss_<task>, lr, epoch, phase, train_samples_per_s, train_seconds
    grad/<key>    grad_cos_<a>_<b>, grad_conflict_frac (with grad.diagnose_every > 0)
    other/<key>   anything else the trainer adds

The x axis is the global training step (the ``step`` metric), so trials line up by steps whatever
their evaluation interval. The HParams run lists the trial's sampled settings under their dotted
keys (``optim.lr``) with their real values, and the search metric's tag (``dev/overall``) as its
metric. Ray-free: ``search.engine.tuner`` feeds it from a Tune callback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEV_METRICS = ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall", "cfimdb_acc")
STEP_KEY = "step"


def tag_for(key: str) -> str:
    """The TensorBoard tag of a reported metric."""
    if key in DEV_METRICS:
        return f"dev/{key}"
    if key.startswith("grad_"):
        return f"grad/{key}"
    if key.startswith("train_") or key in ("lr", "epoch", "phase"):
        return f"train/{key}"
    return f"other/{key}"


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
        written = {}
        for key, value in metrics.items():
            if key == STEP_KEY or key.endswith("_at") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # the x axis, wall-clock timestamps, flags
            tag = tag_for(key)
            self.writer.add_scalar(tag, float(value), global_step=step)
            written[tag] = float(value)
        self.writer.flush()
        return written

    def close(self) -> None:
        self.writer.file_writer.add_summary(self._end)
        self.writer.close()
