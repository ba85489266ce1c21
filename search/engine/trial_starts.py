"""A Tune callback for ``benchmarks/search_overhead.py``: when each trial started, as Tune's controller saw it."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback


class TrialStarts(Callback):
    """The wall-clock time each trial started, as Tune's controller saw it (for benchmarks)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())
