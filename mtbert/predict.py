"""A model's predictions: on one dataset (in file order), the dev metrics of every task, a
checkpoint's final evaluation on the full dev sets with its prediction files for dev and test, and
its scores on the report half of the dev sets (``data.dev_holdout``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtbert.config.run import RunConfig
from mtbert.data.course import DataError, TaskDataset, resolve_data_dir, to_device
from mtbert.data.prepare import load_split
from mtbert.evaluate import Scores, accuracy, confusion_matrix, prediction_filename, write_predictions
from mtbert.model.multitask import MultiTaskModel
from mtbert.tasks import TASKS
from mtbert.train.checkpoint import load_checkpoint

EVAL_BATCH = 64


@dataclass
class TaskPredictions:
    """A dataset's predictions in file order (``predict_outputs``)."""

    ids: list[str]
    label: torch.Tensor  # (N,) as ``Prediction.label``: sst class, para 0/1, sts score
    probs: torch.Tensor | None  # sst (N, 5) class probabilities, para (N,) P(paraphrase); sts None
    gold: torch.Tensor | None  # (N,) labels; None for a test set


@dataclass
class Evaluation:
    """Dev metrics of every task (``Scores.as_dict()``, plus ``cfimdb_acc`` with CFIMDB) and the
    SST confusion matrix (rows gold, columns predicted)."""

    metrics: dict[str, float]
    sst_confusion: list[list[int]]


@dataclass
class FinalEvaluation:
    """A checkpoint on the full dev sets, and the folder of its dev and test prediction files."""

    metrics: dict[str, float]
    sst_confusion: list[list[int]]
    predictions: Path


def predict(model: MultiTaskModel, task: str, ds: TaskDataset, device: torch.device,
            bf16: bool = False) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(ids, predictions, gold labels or None) of a dataset in file order; batches sorted by length."""
    out = predict_outputs(model, task, ds, device, bf16)
    return out.ids, out.label, out.gold


@torch.inference_mode()
def predict_outputs(model: MultiTaskModel, task: str, ds: TaskDataset, device: torch.device,
                    bf16: bool = False, on_batch: Callable[[int], None] | None = None) -> TaskPredictions:  # fmt: skip
    """``predict`` with the head's probabilities too (what ensembles average); ``on_batch(n)`` is
    called after each batch of ``n`` examples (a progress bar)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ds)), key=ds.lengths().__getitem__)
    ids, preds, probs, golds = [], [], [], []
    for start in range(0, len(order), EVAL_BATCH):
        batch = ds.collate([ds[i] for i in order[start : start + EVAL_BATCH]])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model.predict(task, to_device(batch, device))
        ids += batch["ids"]
        preds.append(pred.label.cpu())
        probs.append(None if pred.probs is None else pred.probs.float().cpu())
        golds.append(batch["labels"])
        if on_batch is not None:
            on_batch(len(batch["ids"]))
    model.train(was_training)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # position of each example in sorted order
    gold = None if any(g is None for g in golds) else torch.cat(golds)[back]
    prob = None if any(p is None for p in probs) else torch.cat(probs)[back]
    return TaskPredictions([ids[i] for i in back.tolist()], torch.cat(preds)[back], prob, gold)


def evaluate(model: MultiTaskModel, dev: dict[str, TaskDataset], device: torch.device, bf16: bool = False,
             cfimdb: TaskDataset | None = None) -> Evaluation:
    """Dev metrics of every task, and the SST confusion matrix; with ``cfimdb``, also the sst
    head's accuracy on CFIMDB's binary labels (a class above the neutral 2 counts as positive)."""
    pairs = {}
    for task, ds in dev.items():
        _, pred, gold = predict(model, task, ds, device, bf16)
        pairs[task] = (pred.double().numpy(), gold.double().numpy())
    metrics = Scores.compute(**pairs).as_dict()
    if cfimdb is not None:
        _, pred, gold = predict(model, "sst", cfimdb, device, bf16)
        metrics["cfimdb_acc"] = accuracy((pred > 2).double().numpy(), gold.double().numpy())
    return Evaluation(metrics, confusion_matrix(*pairs["sst"]).tolist())


def report_evaluation(checkpoint: Path, config: RunConfig, tokenizer: Any, device: torch.device) -> dict[str, Any]:
    """The checkpoint on the report half of every dev set (``data.dev_holdout``, ``mtbert.data.holdout``):
    ``{"report": metrics, "report_examples": rows per task, "report_seconds": time taken}``. It is the
    only reader of the report half: call it once, on the model a run or a search has chosen."""
    began = time.perf_counter()
    model = load_checkpoint(checkpoint, device).model
    folder = resolve_data_dir(config.data.dir)
    sets = {t: load_split(config, tokenizer, t, "dev", data_dir=folder, half="report") for t in TASKS}
    metrics = evaluate(model, sets, device, config.train.bf16 and device.type == "cuda").metrics
    return {"report": metrics, "report_examples": {t: len(ds) for t, ds in sets.items()},
            "report_seconds": round(time.perf_counter() - began, 1)}  # fmt: skip


def final_evaluation(checkpoint: Path, config: RunConfig, tokenizer: Any, device: torch.device) -> FinalEvaluation:
    """The best checkpoint on the full dev sets (metrics, SST confusion) and its dev and test
    predictions in the course's submission format, under ``<checkpoint>/predictions``. A split
    whose file this data folder lacks (e.g. no Quora test file) is said on stderr and left out.
    With ``data.dev_holdout`` a full dev set is its whole selection half (the report half is
    ``report_evaluation``'s alone)."""
    model = load_checkpoint(checkpoint, device).model
    out = checkpoint / "predictions"
    out.mkdir(exist_ok=True)
    folder = resolve_data_dir(config.data.dir)
    pairs = {}
    for task in TASKS:
        for split in ("dev", "test"):
            try:
                ds = load_split(config, tokenizer, task, split, data_dir=folder)
            except DataError as e:
                print(f"no {task} {split} predictions: {e}", file=sys.stderr)
                continue
            ids, preds, gold = predict(model, task, ds, device)
            write_predictions(out / prediction_filename(task, split), task, ids, preds.tolist())
            if split == "dev":
                pairs[task] = (preds.double().numpy(), gold.double().numpy())
    scores = Scores.compute(**pairs)
    return FinalEvaluation(scores.as_dict(), confusion_matrix(*pairs["sst"]).tolist(), out)
