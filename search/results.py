"""A search's results as plain records: one ``TrialRecord`` per trial, in a ``SearchResults``.

``load_results`` reads them from a search folder (Tune's files and the Optuna study, through
``search.engine.analysis``); ``status``, ``export``, ``ensemble``, ``report`` and the summary work
with these records only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtbert.evaluate import is_score
from search.engine.trainable import STOP_KEY, TRAINING_ITERATION
from search.errors import SearchError
from search.launch import SUMMARY_FILE, Launch
from search.lineage import read_lineage

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
    # PBT: each time it went on from another trial's checkpoint (search.lineage; lineage.json)
    lineage: list[dict[str, Any]] = field(default_factory=list)

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

    # The search's final pick, from summary.json (``search.summary``): the finalists scored on the
    # full dev sets, best first there, each {trial_id, checkpoint, selection, full_dev, ...}; only
    # those whose best checkpoint is still the one scored. Empty before the search has ended.
    finalists: list[dict[str, Any]] = field(default_factory=list)
    rank_rule: str | None = None  # how ``ranked`` orders the trials, in words (summary.json's)
    selection_dev_examples: int | None = None  # dev rows per task of the selection scores; None: all
    # With data.dev_holdout: the best trial's scores on the report half of the dev sets (summary.json's
    # "report_half": {trial_id, checkpoint, report, report_examples, dev_holdout}); None before the end
    report_half: dict[str, Any] | None = None

    def by_selection(self) -> list[TrialRecord]:
        """Trials with a checkpoint, best first by their best result (on the selection subset)."""
        scored = [t for t in self.trials if t.best is not None and t.checkpoint is not None
                  and t.best.get(self.metric) is not None]  # fmt: skip
        sign = -1 if self.mode == "max" else 1
        return sorted(scored, key=lambda t: (sign * t.best[self.metric], t.trial_id))

    def ranked(self) -> list[TrialRecord]:
        """Trials with a checkpoint, best first: the search's finalists in their full-dev order, then
        the others by their best result on the selection subset (``by_selection``, all there is
        before the search has ended or with ``tune.final_eval: none``)."""
        order = self.by_selection()
        head = [f["trial_id"] for f in self.finalists]
        by_id = {t.trial_id: t for t in order}
        return [by_id[i] for i in head if i in by_id] + [t for t in order if t.trial_id not in head]

    def finalist(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's entry in the final pick (its full-dev scores), or None."""
        return next((f for f in self.finalists if f["trial_id"] == trial_id), None)


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
            lineage=read_lineage(trial.path),
        ))  # fmt: skip
    results = SearchResults(experiment, metric, launch.mode, trials)
    read_final_pick(results)
    return results


def read_final_pick(results: SearchResults) -> None:
    """The final pick of the search's summary.json into ``results``: its finalists whose best
    checkpoint is still the one it scored (a search resumed since may have moved on), its rule and
    the selection subset's size. Nothing when there is no summary or it does not read."""
    try:
        summary = json.loads((results.experiment / SUMMARY_FILE).read_text())
        finalists = summary.get("finalists") or []
    except (OSError, ValueError, AttributeError):
        return
    checkpoints = {t.trial_id: str(t.checkpoint) for t in results.trials if t.checkpoint is not None}
    results.finalists = [f for f in finalists if isinstance(f, dict)
                         and checkpoints.get(f.get("trial_id")) == f.get("checkpoint")]  # fmt: skip
    results.rank_rule = summary.get("rank_rule")
    results.selection_dev_examples = summary.get("selection_dev_examples")
    report = summary.get("report_half")
    if isinstance(report, dict) and checkpoints.get(report.get("trial_id")) == report.get("checkpoint"):
        results.report_half = report


def report_words(results: SearchResults) -> str | None:
    """The best trial's score on the report half of the dev sets, in a phrase; None without one."""
    r = results.report_half
    if not r or not isinstance(r.get("report"), dict):
        return None
    rows = "/".join(str(n) for n in (r.get("report_examples") or {}).values())
    value = r["report"].get(results.metric)
    score = "-" if value is None else f"{value:.4f}"
    return (f"report half: {results.metric} {score} for trial {r['trial_id']} on {rows} sst/para/sts dev rows that "
            f"data.dev_holdout {r.get('dev_holdout')} held out of every choice, scored once after the final pick")


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
