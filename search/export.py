"""``mtbert-search export``: the best trials of a search as ordinary mtbert checkpoints.

    OUT/rank-1/ ... OUT/rank-K/
        encoder/            Hugging Face format, tokenizer included
                            (``transformers.BertModel.from_pretrained("OUT/rank-1/encoder")``)
        heads.safetensors
        config.yaml         the trial's full resolved run config (``mtbert-train`` accepts it)
        metrics.json        the dev metrics of the exported evaluation (on the selection subset)
        predictions/        only for the trials scored on the full dev sets at the end of the search
        trial.json          trial id, rank, sampled settings (dotted keys, real values), the scores on the
                            selection subset (``selection``, ``selection_dev_examples`` rows per task) and,
                            for a finalist, on the full dev sets (``full_dev``, ``full_dev_examples``),
                            ``rank_rule``
        README.md           the model card (``search.card``): scores labelled by their dev rows, settings, use

Trials are ranked as the search ranks them (``SearchResults.ranked``): the finalists of its final
pick by their full-dev score, then the others by their best result on the selection subset; each
exports the checkpoint of that result. The resumable ``state/`` (optimizer, RNG) stays behind: an export is for use, and
``mtbert.train.checkpoint.load_checkpoint`` reads it (safetensors and JSON only).

Every checkpoint is checked as loading checks it (``mtbert.train.checkpoint.check_checkpoint``: headers
and text files, no tensor read) before anything is written, so a bad one stops the export with
nothing written. Each rank is copied into a temporary folder beside OUT and renamed into place, so
OUT never holds part of a rank; if a copy fails, the ranks this export wrote are removed again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from search import storage
from search.card import write_card
from search.engine.trainable import TRAINING_ITERATION
from search.errors import SearchError
from search.results import SCORE_KEYS, SearchResults, TrialRecord, decoded, load_results

TRIAL_FILE = "trial.json"


def export(experiment: str | Path, out: str | Path, top_k: int = 1, space: Any = None,
           results: SearchResults | None = None) -> list[Path]:  # fmt: skip
    """Copy the best ``top_k`` trials' best checkpoints to ``out/rank-1`` ...; returns the folders.
    Raises ``SearchError`` (bad input: nothing is written) naming what is wrong."""
    if top_k < 1:
        raise SearchError(f"--top-k is {top_k}, but must be >= 1")
    out = Path(out).expanduser()
    check_out_folder(out, "the rank-1 ... folders")
    results = results or load_results(experiment)
    ranked = results.ranked()[:top_k]
    if not ranked:
        raise SearchError(f"{results.experiment} has no trial with a checkpoint to export yet")
    taken = [out / f"rank-{i}" for i in range(1, len(ranked) + 1) if (out / f"rank-{i}").exists()]
    if taken:
        raise SearchError(f"{taken[0]} already exists; export into an empty folder (--out)")
    metrics = [checked_metrics(trial) for trial in ranked]
    made_out = not out.exists()
    written: list[Path] = []
    try:
        for rank, (trial, m) in enumerate(zip(ranked, metrics), 1):
            info = trial_info(rank, trial, m, results, space)
            written.append(_copy_rank(trial.checkpoint, out, rank, info))
    except BaseException:  # an error or Ctrl-C part way: no rank of this export stays
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return written


def check_out_folder(out: Path, holds: str) -> None:
    """``--out`` must be a folder, or a path to make one at: ``SearchError`` if it, or a folder
    above it, is a file, or the first existing folder above it cannot be written."""
    for folder in (out, *out.parents):
        if not folder.exists():
            continue
        if folder == out and not folder.is_dir():
            raise SearchError(f"--out {out} is a file, but must be a folder (for {holds})")
        if not folder.is_dir():
            raise SearchError(f"--out {out} cannot be made: {folder} is a file")
        if folder != out and not os.access(folder, os.W_OK | os.X_OK):
            raise SearchError(f"--out {out} cannot be made: {folder} is not writable")
        return


def checked_metrics(trial: TrialRecord) -> dict[str, Any]:
    """The trial's checkpoint checked as ``load_checkpoint`` checks it; its metrics."""
    from mtbert import CheckpointError, check_checkpoint

    try:
        return check_checkpoint(storage.fetch(trial.checkpoint)).metrics
    except CheckpointError as e:
        raise SearchError(f"trial {trial.trial_id}: {e}") from None


def trial_info(rank: int, trial: TrialRecord, metrics: dict[str, Any], results: SearchResults,
               space: Any) -> dict[str, Any]:  # fmt: skip
    final = results.finalist(trial.trial_id) or {}
    info = {
        "rank": rank, "trial_id": trial.trial_id, "metric": results.metric, "mode": results.mode,
        "score": trial.best[results.metric], "scores": {k: metrics[k] for k in SCORE_KEYS if k in metrics},
        "params": decoded(space, trial.params), "step": metrics.get("step"),
        "iteration": trial.best.get(TRAINING_ITERATION), "optuna_state": trial.state, "tune_status": trial.status,
        "source": str(trial.checkpoint), "experiment": str(results.experiment),
        # both scores, each with the dev rows it is on; the rank follows results.ranked() (rank_rule)
        "selection": {k: metrics[k] for k in SCORE_KEYS if k in metrics},
        "full_dev": final.get("full_dev"), "full_dev_examples": final.get("full_dev_examples"),
        "finalist": bool(final), "rank_rule": results.rank_rule or f"by {results.metric} on the selection subset",
    }  # fmt: skip
    if results.rank_rule:  # the search has ended: its summary says (None: the whole dev sets)
        info["selection_dev_examples"] = results.selection_dev_examples
    elif space is not None:
        info["selection_dev_examples"] = space.base.data.max_eval_per_task
    # else left out: the card reads it from the checkpoint's config
    return info


def _copy_rank(source: Path, out: Path, rank: int, info: dict[str, Any]) -> Path:
    """``source`` and ``trial.json`` into ``out/rank-<rank>``, through a temporary folder beside
    ``out`` that is renamed into place whole."""
    dest = out / f"rank-{rank}"
    absolute = out.resolve()
    tmp = absolute.parent / f".{absolute.name}.rank-{rank}.tmp"
    try:
        if tmp.exists():  # left by an export that was killed
            shutil.rmtree(tmp)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("state", "*.tmp"))
        (tmp / TRIAL_FILE).write_text(json.dumps(info, indent=2, default=str))
        write_card(tmp, info, shown=str(dest))
        out.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
    except OSError as e:
        raise SearchError(f"could not copy {source} to {dest}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
