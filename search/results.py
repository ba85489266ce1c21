"""A search's results as plain records: one ``TrialRecord`` per trial, in a ``SearchResults``.

``load_results`` reads them from a search folder (Tune's files and the Optuna study, through
``search.engine.analysis``); ``status``, ``export``, ``ensemble``, ``report`` and the summary work
with these records only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbert.evaluate import is_score
from search.engine.trainable import STOP_KEY, TRAINING_ITERATION
from search.errors import SearchError
from search.launch import Launch

SCORE_KEYS = ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall")

# the first line of an exception at the end of a traceback: "ray.exceptions.RayTaskError(RuntimeError): ..."
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(\([\w.]+\))?: ")


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    iterations: int
    params: dict[str, Any]  # as sampled (the Optuna params, the trial's Tune config)
    best: dict[str, Any] | None  # the result with the best metric
    last: dict[str, Any] | None
    checkpoint: Path | None  # the checkpoint of the best result
    path: Path
    state: str | None = None  # Optuna's: COMPLETE, PRUNED, FAIL, RUNNING
    error: str | None = None  # the path of Tune's error.txt, if the trial ever failed
    stop_reason: str | None = None  # why it ended itself before its budget (a non-finite loss)
    failures: int = 0  # the times it failed (an exception, or its node was lost), retries included

    def error_message(self) -> str | None:
        """The exception its last failure raised, in a line or a few (None if it never failed)."""
        if not self.error or not Path(self.error).is_file():
            return None
        return error_message(Path(self.error).read_text())


@dataclass
class SearchResults:
    experiment: Path
    metric: str
    mode: str
    trials: list[TrialRecord]

    def ranked(self) -> list[TrialRecord]:
        """Trials with a checkpoint, best first by their best result."""
        scored = [t for t in self.trials if t.best is not None and t.checkpoint is not None
                  and t.best.get(self.metric) is not None]  # fmt: skip
        sign = -1 if self.mode == "max" else 1
        return sorted(scored, key=lambda t: (sign * t.best[self.metric], t.trial_id))


def load_results(experiment: str | Path) -> SearchResults:
    """The trials of a search folder; ``SearchError`` when it holds no search or no Tune results yet."""
    from search.engine.analysis import read_trials  # Ray loads only for the commands that read results

    experiment = Path(experiment).expanduser().resolve()
    if not experiment.is_dir():
        raise SearchError(f"{experiment} is not a folder; give a search folder, <tune.storage_path>/<tune.name>")
    launch = Launch.read(experiment)
    metric = launch.metric
    trials = []
    for trial in read_trials(experiment, metric, launch.mode):
        rows = [r for r in trial.rows if r.get(metric) is not None]
        # a trial that stopped on a non-finite loss reports NaN last: its best is an earlier evaluation
        scored = [r for r in rows if is_score(r[metric])]
        best = None
        if scored:
            pick = max if launch.mode == "max" else min
            best = pick(scored, key=lambda r: r[metric])
        stop = rows[-1].get(STOP_KEY) if rows else None
        trials.append(TrialRecord(
            trial_id=trial.trial_id, status=trial.status, iterations=int(rows[-1][TRAINING_ITERATION]) if rows else 0,
            params=trial.config, best=best, last=rows[-1] if rows else None,
            checkpoint=trial.checkpoint, path=trial.path, state=trial.state,
            error=trial.error_file, stop_reason=stop if isinstance(stop, str) else None, failures=trial.failures,
        ))  # fmt: skip
    return SearchResults(experiment, metric, launch.mode, trials)


def error_message(text: str, max_lines: int = 3) -> str:
    """The exception at the end of a Tune error.txt (``Failure # N ...`` then a traceback), without
    the traceback: ``RuntimeError: ...`` and the lines of its message, at most ``max_lines``."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    # Tune's file holds the latest failure last; a Ray traceback ends with the exception's lines
    start = next((i for i in range(len(lines) - 1, -1, -1) if _EXCEPTION_LINE.match(lines[i])), None)
    if start is None:
        return "\n".join(lines[-max_lines:])
    return "\n".join(lines[start : start + max_lines])


def decoded(space: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Sampled settings under their dotted keys with their real values (raw Optuna values without a space)."""
    if space is None:
        return dict(params)
    try:
        return space.decode(params)
    except (ValueError, KeyError):
        return dict(params)
