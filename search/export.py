"""``mtbert-search export``: the best trials of a search as ordinary mtbert checkpoints.

    OUT/rank-1/ ... OUT/rank-K/
        encoder/            Hugging Face format, tokenizer included
                            (``transformers.BertModel.from_pretrained("OUT/rank-1/encoder")``)
        heads.safetensors
        config.yaml         the trial's full resolved run config (``mtbert-train`` accepts it)
        metrics.json        the dev metrics of the exported evaluation (on the selection subset)
        predictions/        only for the trial scored on the full dev sets at the end of the search
        trial.json          trial id, rank, sampled settings (dotted keys, real values), score

Trials are ranked by their best result on the search metric; each exports the checkpoint of that
result. The resumable ``state/`` (optimizer, RNG) stays behind: an export is for use, and
``mtbert.checkpoint.load_checkpoint`` reads it (safetensors and JSON only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from search.tuner import SCORE_KEYS, TRAINING_ITERATION, SearchError, SearchResults, decoded, load_results

TRIAL_FILE = "trial.json"


def export(experiment: str | Path, out: str | Path, top_k: int = 1, space: Any = None,
           results: SearchResults | None = None) -> list[Path]:  # fmt: skip
    """Copy the best ``top_k`` trials' best checkpoints to ``out/rank-1`` ...; returns the folders."""
    from mtbert.checkpoint import CONFIG_FILE, ENCODER_DIR, HEADS_FILE, METRICS_FILE

    if top_k < 1:
        raise SearchError(f"--top-k is {top_k}, but must be >= 1")
    results = results or load_results(experiment)
    ranked = results.ranked()
    if not ranked:
        raise SearchError(f"{results.experiment} has no trial with a checkpoint to export yet")
    out = Path(out)
    taken = [out / f"rank-{i}" for i in range(1, min(top_k, len(ranked)) + 1) if (out / f"rank-{i}").exists()]
    if taken:
        raise SearchError(f"{taken[0]} already exists; export into an empty folder (--out)")
    written = []
    for rank, trial in enumerate(ranked[:top_k], 1):
        missing = [
            n for n in (CONFIG_FILE, HEADS_FILE, METRICS_FILE, ENCODER_DIR) if not (trial.checkpoint / n).exists()
        ]
        if missing:
            raise SearchError(f"{trial.checkpoint} is not a complete mtbert checkpoint: {', '.join(missing)} missing")
        dest = out / f"rank-{rank}"
        shutil.copytree(trial.checkpoint, dest, ignore=shutil.ignore_patterns("state", "*.tmp"))
        metrics = json.loads((dest / METRICS_FILE).read_text())
        info = {
            "rank": rank, "trial_id": trial.trial_id, "metric": results.metric, "mode": results.mode,
            "score": trial.best[results.metric], "scores": {k: metrics[k] for k in SCORE_KEYS if k in metrics},
            "params": decoded(space, trial.params), "step": metrics.get("step"),
            "iteration": trial.best.get(TRAINING_ITERATION), "optuna_state": trial.state, "tune_status": trial.status,
            "source": str(trial.checkpoint), "experiment": str(results.experiment),
        }  # fmt: skip
        (dest / TRIAL_FILE).write_text(json.dumps(info, indent=2, default=str))
        written.append(dest)
    return written
