"""The end of a search: its best trial, scored on the full dev sets as ``tune.final_eval`` says, in
``summary.json`` (written whole or not at all) and returned for the command to print."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtbert.evaluate import strict_json
from search.engine.trainable import TRAINING_ITERATION
from search.launch import SUMMARY_FILE
from search.results import SCORE_KEYS, SearchResults, decoded


def summarize(results: SearchResults, space: Any, *, final_eval: str | None = None, log: Any = print) -> dict[str, Any]:
    """The best trial: its sampled settings, config, checkpoint and scores on the selection subset,
    and on the full dev sets as ``tune.final_eval`` says (``best``: the best trial's checkpoint,
    ``all``: every trial's best checkpoint, ``none``). Written to ``summary.json`` too."""
    from mtbert.train.checkpoint import CONFIG_FILE, METRICS_FILE

    final_eval = final_eval or getattr(space.tune, "final_eval", "best")
    states: dict[str, int] = {}
    for t in results.trials:
        key = (t.state or t.status).lower()
        states[key] = states.get(key, 0) + 1
    summary: dict[str, Any] = {
        "experiment": str(results.experiment), "metric": results.metric, "mode": results.mode,
        "trials": len(results.trials), "trial_states": states, "final_eval": final_eval, "best": None,
    }  # fmt: skip
    # why trials ended early or failed: the exception of each errored trial (after its retries),
    # the reason of each that stopped itself (a non-finite loss)
    errors = {t.trial_id: t.error_message() or "(no error file)" for t in results.trials if t.status == "ERROR"}
    stopped = {t.trial_id: t.stop_reason for t in results.trials if t.stop_reason}
    summary.update(errors=errors, stopped=stopped)
    ranked = results.ranked()
    if ranked:
        best = ranked[0]
        metrics = json.loads((best.checkpoint / METRICS_FILE).read_text())
        summary["best"] = {
            "trial_id": best.trial_id, "params": decoded(space, best.params),
            "config": str(best.checkpoint / CONFIG_FILE), "checkpoint": str(best.checkpoint),
            "step": metrics.get("step"), "iteration": best.best.get(TRAINING_ITERATION), "state": best.state,
            "selection": {k: metrics[k] for k in SCORE_KEYS if k in metrics},
            "selection_dev_examples": getattr(space.base.data, "max_eval_per_task", None), "full_dev": None,
        }  # fmt: skip
        scored = {"best": ranked[:1], "all": ranked}.get(final_eval, [])
        full = {}
        for trial in scored:
            log(f"scoring trial {trial.trial_id}'s best checkpoint on the full dev sets")
            full[trial.trial_id] = full_evaluation(trial.checkpoint, log)
        summary["best"]["full_dev"] = full.get(best.trial_id)
        if final_eval == "all":
            summary["full_dev"] = full
    # written whole or not at all: a search killed here leaves no half a summary (resume writes it)
    path = results.experiment / SUMMARY_FILE
    partial = path.with_name(f".{SUMMARY_FILE}.partial")
    partial.write_text(strict_json(summary, indent=2))
    os.replace(partial, path)
    return summary


def full_evaluation(checkpoint: Path, log: Any = print) -> dict[str, float]:
    """mtbert-train's final evaluation of a checkpoint: the full dev sets, and dev and test
    prediction files in ``<checkpoint>/predictions``."""
    from mtbert import final_evaluation, load_config, resolve_device
    from mtbert.model.pretrained import load_tokenizer
    from mtbert.train.checkpoint import CONFIG_FILE, ENCODER_DIR

    config = load_config(Path(checkpoint) / CONFIG_FILE)
    tokenizer = load_tokenizer(Path(checkpoint) / ENCODER_DIR)
    return final_evaluation(Path(checkpoint), config, tokenizer, resolve_device(config.train.device)).metrics
