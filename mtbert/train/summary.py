"""What a finished run reports (``mtbert-train``'s table and ``--json``): the best evaluation, on
the full dev sets when there was a final evaluation, next to the evaluations that chose it, and
the run's other figures (gradient conflict, mlm phases, a merged model's serving compute)."""

from __future__ import annotations

import dataclasses
from typing import Any

from mtbert.model.merge import TaskEncoders, compute_report
from mtbert.predict import FinalEvaluation
from mtbert.train.loop import TrainResult
from mtbert.train.run import Run

SELECTION_KEYS = ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall")


def run_summary(run: Run, result: TrainResult, final: FinalEvaluation | None,
                report: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The summary of ``run``: ``final``'s full-dev metrics when given, else the selection's; with
    ``report`` (``mtbert.predict.report_evaluation``), the best checkpoint's scores on the report half."""
    selection = {k: result.metrics[k] for k in SELECTION_KEYS}
    data, data_config = run.data, run.config.data
    return {
        **(final.metrics if final else selection),  # the best checkpoint on the full dev sets (train.final_eval)
        "best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early,
        "train_samples_per_s": round(result.train_samples_per_s, 2),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "predictions": str(final.predictions) if final else None,
        "dev": "full" if final else "selection",
        # what chose the best step: evaluations on data.max_eval_per_task dev examples per task
        "selection_metrics": selection,
        "selection_dev_examples": {t: len(ds) for t, ds in data.dev.items()},
        "malformed_rows": len(data.malformed),
        # gradient-conflict figures (grad.diagnose_every), averaged over the evaluations' intervals
        "grad_conflict": grad_figures(result.history),
        "mlm": [dataclasses.asdict(m) for m in run.mlm],
        "merged": merged_serving(run),
        # data.dev_holdout: the report half of the dev sets, read once, after the best step was chosen
        "dev_holdout": data_config.dev_holdout, "holdout_seed": data_config.holdout_seed,
        **(report or {"report": None, "report_examples": None}),
    }  # fmt: skip


def merged_serving(run: Run) -> dict | None:
    """After a specialist phase: the merged model's compute against running one model per task,
    for the SST dev sentences at their own lengths (paper 004)."""
    if not isinstance(run.model.encoder, TaskEncoders):
        return None
    report = compute_report(run.model.encoder, run.data.dev["sst"].lengths())
    return {"shared_depth": report.shared_depth, "layers": report.num_layers, "saved": round(report.saved, 4),
            "text": str(report)}


def grad_figures(history: list[dict]) -> dict[str, float]:
    """Each gradient-conflict figure's mean over the run's evaluations that have it."""
    keys = sorted({k for m in history for k in m if k.startswith("grad_")})
    return {k: round(sum(vals) / len(vals), 4) for k in keys if (vals := [m[k] for m in history if k in m])}
