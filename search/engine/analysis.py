"""What Ray Tune saved about a search's trials, read back as plain records (``TuneTrial``) that
``search.results`` turns into the search's results; the Optuna states come from ``searcher``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import ExperimentAnalysis

from mtbert.evaluate import is_score
from search.engine.searcher import optuna_states
from search.errors import SearchError


@dataclass
class TuneTrial:
    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    config: dict[str, Any]  # as sampled
    rows: list[dict[str, Any]]  # its results, in order (progress.csv)
    checkpoint: Path | None  # the checkpoint of its best result on the metric, while Tune keeps it
    path: Path
    error_file: str | None  # Tune's error.txt, if the trial ever failed
    failures: int  # retries included
    state: str | None  # Optuna's, when the study knows the trial


def read_trials(experiment: Path, metric: str, mode: str) -> list[TuneTrial]:
    """The trials of a search folder, from Tune's files (``ExperimentAnalysis``) and the Optuna study;
    ``SearchError`` when Tune has saved nothing there yet."""
    try:
        analysis = ExperimentAnalysis(str(experiment), default_metric=metric, default_mode=mode)
    except ValueError as e:
        raise SearchError(f"{experiment} has no Ray Tune results yet: {str(e).splitlines()[0]}") from None
    states = optuna_states(experiment) or {}
    frames = analysis.trial_dataframes
    trials = []
    for trial in analysis.trials:
        df = frames.get(trial.trial_id)
        rows = df.to_dict("records") if df is not None and len(df) else []
        # a trial that stopped on a non-finite loss reports NaN last: its best is an earlier evaluation
        scored = any(is_score(r.get(metric)) for r in rows)
        checkpoint = analysis.get_best_checkpoint(trial, metric, mode) if scored else None
        name = trial.run_metadata.error_filename
        trials.append(TuneTrial(
            trial_id=trial.trial_id, status=trial.status, config=dict(trial.config), rows=rows,
            # in its trial's folder: Ray re-roots a moved folder's checkpoint paths (a working copy of a
            # search kept at a URI: search.storage) with the old root left in
            checkpoint=Path(trial.path) / Path(checkpoint.path).name if checkpoint is not None else None,
            path=Path(trial.path),
            error_file=str(Path(trial.path) / name) if name else None, failures=trial.run_metadata.num_failures,
            state=states.get(trial.trial_id),
        ))  # fmt: skip
    return trials
