"""The end of a search: its final pick and best trial, in ``summary.json`` (written whole or not at
all) and returned for the command to print.

Trials are compared during the search on ``tune.eval_subset`` dev rows per task (the selection
score, what ASHA and the sampler saw). The final pick is fairer: with ``tune.final_eval: best`` the
top ``tune.final_top_k`` trials by selection score (the finalists) have their best checkpoints
scored on the full dev sets, and the best of them there is the search's best; ``all`` scores every
trial so; ``none`` keeps the selection order. ``summary.json`` holds:

    best          the search's best trial: settings, config, checkpoint, ``selection`` scores (on
                  ``selection_dev_examples`` rows per task, null: all), ``full_dev`` scores (on
                  ``full_dev_examples`` rows per task; null when it was not scored), ``selection_rank``
    finalists     the trials scored on the full dev sets, best first there, each {trial_id,
                  checkpoint, selection_rank, selection, full_dev, full_dev_examples}
    final_top_k, rank_rule      how many were finalists, and the order of every trial in words
    dev_holdout, report_half    with data.dev_holdout: the best checkpoint on the report half
                  ({trial_id, checkpoint, dev_holdout, report, report_examples, report_seconds})

``search.results.SearchResults.ranked`` reads the finalists back, so ``export``, ``ensemble``,
``status`` and ``report`` put trials in this order. Each finalist's full-dev scores are kept in
``final-eval.json`` as soon as they are known: a search killed while it scores them is resumed
without scoring those again.

With ``data.dev_holdout`` every dev set is split in two (``mtbert.data.holdout``): the evaluations,
the final pick and its "full dev sets" read only the selection half, and once the best trial is
known its checkpoint is scored on the report half (``report_half`` in summary.json: an estimate that
no choice of the search was made on).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtbert.evaluate import is_score, prediction_filename, strict_json
from search import storage
from search.engine.trainable import TRAINING_ITERATION
from search.launch import SUMMARY_FILE
from search.results import SCORE_KEYS, SearchResults, TrialRecord, decoded

FINAL_EVAL_FILE = "final-eval.json"  # in the search folder: full-dev scores by checkpoint, kept for a resume
TASKS = ("sst", "para", "sts")


def summarize(results: SearchResults, space: Any, *, final_eval: str | None = None, log: Any = print) -> dict[str, Any]:
    """The final pick and best trial (see the module doc), written to ``summary.json`` too; ``results``
    takes the final order (``ranked``)."""
    from mtbert.train.checkpoint import CONFIG_FILE

    final_eval = final_eval or getattr(space.tune, "final_eval", "best")
    top_k = getattr(space.tune, "final_top_k", 3)
    subset = getattr(space.base.data, "max_eval_per_task", None)
    states: dict[str, int] = {}
    for t in results.trials:
        key = (t.state or t.status).lower()
        states[key] = states.get(key, 0) + 1
    summary: dict[str, Any] = {
        "experiment": str(results.experiment), "metric": results.metric, "mode": results.mode,
        "trials": len(results.trials), "trial_states": states, "final_eval": final_eval, "final_top_k": top_k,
        "selection_dev_examples": subset, "rank_rule": rank_rule(final_eval, top_k, results.metric, subset),
        "best": None, "finalists": [],
    }  # fmt: skip
    # why trials ended early or failed: the exception of each errored trial (after its retries),
    # the reason of each that stopped itself (a non-finite loss)
    errors = {t.trial_id: t.error_message() or "(no error file)" for t in results.trials if t.status == "ERROR"}
    stopped = {t.trial_id: t.stop_reason for t in results.trials if t.stop_reason}
    summary.update(errors=errors, stopped=stopped)
    order = results.by_selection()
    scored = {"best": order[:top_k], "all": order}.get(final_eval, [])
    finalists = final_pick(scored, order, results, log)
    summary["finalists"] = finalists
    if final_eval == "all":
        summary["full_dev"] = {f["trial_id"]: f["full_dev"] for f in finalists}
    results.finalists, results.rank_rule, results.selection_dev_examples = finalists, summary["rank_rule"], subset
    ranked = results.ranked()
    if ranked:
        best = ranked[0]
        entry = results.finalist(best.trial_id) or {}
        summary["best"] = {
            "trial_id": best.trial_id, "params": decoded(space, best.params),
            "config": str(best.checkpoint / CONFIG_FILE), "checkpoint": str(best.checkpoint),
            "step": checkpoint_metrics(best).get("step"), "iteration": best.best.get(TRAINING_ITERATION),
            "state": best.state, "selection": selection_scores(best), "selection_dev_examples": subset,
            "selection_rank": order.index(best) + 1, "full_dev": entry.get("full_dev"),
            "full_dev_examples": entry.get("full_dev_examples"),
        }  # fmt: skip
    holdout = getattr(space.base.data, "dev_holdout", None)
    summary["dev_holdout"], summary["report_half"] = holdout, None
    if holdout and ranked:
        summary["report_half"] = report_half(results, ranked[0], holdout, log)
        results.report_half = summary["report_half"]
    # written whole or not at all: a search killed here leaves no half a summary (resume writes it)
    write_json(results.experiment / SUMMARY_FILE, summary)
    return summary


def final_pick(scored: list[TrialRecord], order: list[TrialRecord], results: SearchResults,
               log: Any = print) -> list[dict[str, Any]]:  # fmt: skip
    """``scored`` (trials in selection order) scored on the full dev sets, best first there; a trial
    whose full-dev score is not a number goes after those with one, ties keep the selection order."""
    kept = read_kept(results.experiment, None)
    finalists = []
    for i, trial in enumerate(scored, 1):
        key = str(trial.checkpoint)
        if "full_dev" not in kept.get(key, {}):
            log(f"scoring trial {trial.trial_id}'s best checkpoint on the full dev sets ({i} of {len(scored)})")
            kept[key] = {**kept.get(key, {}), **full_evaluation(trial.checkpoint, log)}
            write_json(results.experiment / FINAL_EVAL_FILE, kept)
        finalists.append({
            "trial_id": trial.trial_id, "checkpoint": key, "selection_rank": order.index(trial) + 1,
            "selection": selection_scores(trial), "full_dev": kept[key]["full_dev"],
            "full_dev_examples": kept[key].get("full_dev_examples"),
        })  # fmt: skip
    sign = -1 if results.mode == "max" else 1

    def full_dev_first(f: dict[str, Any]) -> tuple:
        value = (f.get("full_dev") or {}).get(results.metric)
        return (0, sign * value, f["selection_rank"]) if is_score(value) else (1, 0, f["selection_rank"])

    return sorted(finalists, key=full_dev_first)


def report_half(results: SearchResults, best: TrialRecord, holdout: float, log: Any = print) -> dict[str, Any]:
    """The search's best checkpoint scored on the report half of the dev sets, the one time anything
    reads it (``mtbert.data.holdout``): after every choice, the final pick's included, was made. Kept
    in ``final-eval.json`` with the full-dev scores, so a resumed search does not score it again."""
    from mtbert import load_config, resolve_device
    from mtbert.model.pretrained import load_tokenizer
    from mtbert.predict import report_evaluation
    from mtbert.train.checkpoint import CONFIG_FILE, ENCODER_DIR

    kept, key = read_kept(results.experiment, None), str(best.checkpoint)
    entry = kept.get(key, {})
    if "report" not in entry:
        log(f"scoring trial {best.trial_id}'s best checkpoint on the report half of the dev sets")
        storage.fetch(best.checkpoint)
        config = load_config(best.checkpoint / CONFIG_FILE)
        tokenizer = load_tokenizer(best.checkpoint / ENCODER_DIR)
        entry = kept[key] = {**entry, **report_evaluation(best.checkpoint, config, tokenizer,
                                                          resolve_device(config.train.device))}  # fmt: skip
        write_json(results.experiment / FINAL_EVAL_FILE, kept)
    return {"trial_id": best.trial_id, "checkpoint": key, "dev_holdout": holdout,
            **{k: entry[k] for k in ("report", "report_examples", "report_seconds")}}  # fmt: skip


def rank_rule(final_eval: str, top_k: int, metric: str, subset: int | None) -> str:
    """How the search's trials are ordered, in words (for summary.json, export metadata and cards)."""
    selection = f"{metric} on {f'{subset} dev rows per task' if subset else 'the whole dev sets'} (the selection score)"
    if final_eval == "best":
        return (f"the top {top_k} trial(s) by {selection} were scored on the full dev sets and come first, by "
                f"full-dev {metric}; the others follow by their selection score")  # fmt: skip
    if final_eval == "all":
        return f"every trial scored on the full dev sets, best first by full-dev {metric}"
    return f"by {selection}"


def full_evaluation(checkpoint: Path, log: Any = print) -> dict[str, Any]:
    """mtbert-train's final evaluation of a checkpoint: its scores on the full dev sets
    (``full_dev``) and their rows per task (``full_dev_examples``), with dev and test prediction
    files in ``<checkpoint>/predictions``."""
    from mtbert import final_evaluation, load_config, resolve_device
    from mtbert.model.pretrained import load_tokenizer
    from mtbert.train.checkpoint import CONFIG_FILE, ENCODER_DIR

    checkpoint = storage.fetch(checkpoint)
    config = load_config(Path(checkpoint) / CONFIG_FILE)
    tokenizer = load_tokenizer(Path(checkpoint) / ENCODER_DIR)
    final = final_evaluation(Path(checkpoint), config, tokenizer, resolve_device(config.train.device))
    return {"full_dev": final.metrics, "full_dev_examples": dev_rows(Path(final.predictions))}


def dev_rows(predictions: Path) -> dict[str, int]:
    """Rows per task of the dev prediction files in ``predictions`` (a header line, then one per row)."""
    rows = {}
    for task in TASKS:
        path = predictions / prediction_filename(task, "dev")
        if path.is_file():
            rows[task] = max(len(path.read_text(encoding="utf-8").splitlines()) - 1, 0)
    return rows


def read_kept(experiment: Path, kind: str | None = "full_dev") -> dict[str, Any]:
    """The scores kept in ``final-eval.json`` by checkpoint, each {full_dev, full_dev_examples} and,
    for the best, {report, report_examples, report_seconds}: those that have ``kind`` (all: None),
    of checkpoints that are still there."""
    try:
        kept = json.loads((experiment / FINAL_EVAL_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(kept, dict):
        return {}
    return {k: v for k, v in kept.items() if isinstance(v, dict) and (kind is None or kind in v) and storage.present(k)}


def checkpoint_metrics(trial: TrialRecord) -> dict[str, Any]:
    from mtbert.train.checkpoint import METRICS_FILE

    return json.loads((storage.fetch(trial.checkpoint) / METRICS_FILE).read_text())


def selection_scores(trial: TrialRecord) -> dict[str, float]:
    """The trial's best checkpoint's scores on the selection subset."""
    metrics = checkpoint_metrics(trial)
    return {k: metrics[k] for k in SCORE_KEYS if k in metrics}


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (NaN as null), through a temporary file renamed over ``path``."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(strict_json(value, indent=2))
    os.replace(partial, path)
