"""A trained model on new text: what ``mtbert-train predict`` runs.

The model is a folder of one of three kinds:

- a checkpoint (``<train.out_dir>/best``, a search trial's ``checkpoint_<n>``): ``config.yaml``,
  ``heads.safetensors``, ``encoder/`` (``mtbert.train.checkpoint``);
- an export rank (``mtbert-search export``'s ``OUT/rank-N``): a checkpoint plus ``trial.json``;
- an ensemble folder (``mtbert-search ensemble``'s ``OUT``): its ``report.json`` names the member
  checkpoints and, per task, the rule and each member's weight (``mtbert.ensemble.read_ensemble``);
  the members' outputs are combined by ``mtbert.ensemble.combine``, the rule the ensemble was chosen with.

Each member tokenises the input as its own config says (head, max length, pair separator) and
predicts through ``mtbert.predict.predict_outputs``, the function the final evaluation and the
ensemble command use: batches sorted by length, the rows put back in input order, bf16 autocast on
CUDA when asked. On the same file, the rows equal those of the prediction files those commands wrote.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from mtbert.data.course import Example, TaskDataset
from mtbert.data.inputs import Inputs
from mtbert.data.prepare import pair_encodings
from mtbert.data.tokencache import encode
from mtbert.ensemble import REPORT_FILE, EnsembleError, combine, mean_output, read_ensemble
from mtbert.predict import predict_outputs
from mtbert.train.checkpoint import (
    CONFIG_FILE,
    ENCODER_DIR,
    ENCODERS_DIR,
    HEADS_FILE,
    CheckpointError,
    check_checkpoint,
    load_checkpoint,
)

FORMATS = ("csv", "jsonl")
KINDS = (
    "a checkpoint (config.yaml, heads.safetensors, encoder/), an export rank (mtbert-search export's "
    "OUT/rank-N: the same plus trial.json) or an ensemble folder (mtbert-search ensemble's OUT, with report.json)"
)
SEARCH_FILE = "search.json"  # marks a search folder (``search.launch``), named here only to say what to do with one


@dataclass(frozen=True)
class Model:
    """A model folder, checked: its members' checkpoints with their counts for one task, and the
    rule that combines them (None for a single checkpoint)."""

    path: Path
    kind: str  # "checkpoint" or "ensemble"
    members: list[tuple[str, Path, int]]  # (name, checkpoint, times picked)
    rule: str | None


@dataclass
class Predictions:
    """One row per input, in input order."""

    ids: list[str] | None
    label: torch.Tensor  # (N,) sst class, para 0/1, sts score
    probs: torch.Tensor | None  # sst (N, 5), para (N,) P(paraphrase); an ensemble's: the members' weighted mean


def open_model(path: str | Path, task: str) -> Model:
    """The folder as one of the three kinds, each checkpoint it uses checked as loading checks it (no
    tensor read): ``CheckpointError`` or ``EnsembleError`` naming the file and what was expected."""
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist; MODEL must be {KINDS}")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file; MODEL must be a folder: {KINDS}")
    if (folder / REPORT_FILE).is_file():
        spec = read_ensemble(folder)
        members = spec.members(task)
        for name, checkpoint, _ in members:
            try:
                check_checkpoint(checkpoint)
            except CheckpointError as e:
                raise EnsembleError(f"{folder / REPORT_FILE} names member {name} at {checkpoint}, which cannot be "
                                    f"used: {e}") from None  # fmt: skip
        return Model(folder, "ensemble", members, spec.rules[task])
    if any((folder / name).exists() for name in (CONFIG_FILE, HEADS_FILE, ENCODER_DIR, ENCODERS_DIR)):
        check_checkpoint(folder)
        return Model(folder, "checkpoint", [(folder.name, folder, 1)], None)
    raise CheckpointError(f"{folder} is none of the model folders{_hint(folder)}; MODEL must be {KINDS}")


def _hint(folder: Path) -> str:
    """What the user probably meant, for the folders people give by mistake."""
    if (folder / SEARCH_FILE).is_file():
        return (f": it is a search folder; export its best trial first (mtbert-search export {folder} --out OUT) "
                "and give OUT/rank-1, or combine trials with mtbert-search ensemble")  # fmt: skip
    for child in ("best", "rank-1"):
        if (folder / child / CONFIG_FILE).is_file():
            return f" (did you mean {folder / child}?)"
    return ""


def dataset(inputs: Inputs, config: object, tokenizer: object, task: str) -> TaskDataset:
    """The inputs tokenised as ``config``'s ``task`` head reads them, as ``mtbert.data.prepare.load_split``
    tokenises a course file."""
    d = config.data
    pair = "siamese" if pair_encodings(config)[task] == "siamese" else "concat"
    encoded = encode(inputs.sentences, tokenizer, max_length=d.max_length, pair=pair,
                     separator=d.pair_separator if task != "sst" else None)  # fmt: skip
    ids = inputs.ids or [str(i) for i in range(len(inputs))]
    return TaskDataset([Example(i, s, None, n) for n, (i, s) in enumerate(zip(ids, inputs.sentences), 1)], encoded)


def predict_inputs(model: Model, task: str, inputs: Inputs, device: torch.device, bf16: bool = False,
                   on_batch: Callable[[int], None] | None = None) -> Predictions:  # fmt: skip
    """Every member on the inputs; an ensemble's outputs combined by its rule with its weights."""
    outputs, single = [], None
    for _, checkpoint, _ in model.members:
        loaded = load_checkpoint(checkpoint, device)
        pred = predict_outputs(loaded.model, task, dataset(inputs, loaded.config, loaded.tokenizer, task), device,
                               bf16, on_batch)  # fmt: skip
        del loaded
        single = pred
        # float32, as the ensemble command keeps each member's outputs before combining them
        outputs.append((pred.label if task == "sts" else pred.probs).float())
    if model.rule is None:
        return Predictions(inputs.ids, single.label, single.probs)
    stacked = torch.stack(outputs)  # (M, N, ...)
    counts = torch.tensor([c for _, _, c in model.members], dtype=torch.float64)
    label = combine(task, model.rule, stacked, counts)
    return Predictions(inputs.ids, label, None if task == "sts" else mean_output(stacked, counts))


def columns(task: str, with_ids: bool) -> list[str]:
    """The columns of the CSV output (the keys of the JSON lines, where sst's probabilities are one list)."""
    head = ["id"] if with_ids else []
    if task == "sts":
        return head + ["score"]
    if task == "para":
        return head + ["label", "prob_paraphrase"]
    return head + ["label"] + [f"prob_{k}" for k in range(5)]


def rows(task: str, pred: Predictions) -> list[dict]:
    """One dict per input: id (if the input had ids), then the label and probabilities, or the score.
    A score is written in full (it reads back as the same float as the course prediction files' value);
    probabilities to 6 decimals."""
    out = []
    labels = pred.label.tolist()
    probs = pred.probs.tolist() if pred.probs is not None else [None] * len(labels)
    for i, (label, p) in enumerate(zip(labels, probs)):
        row: dict = {"id": pred.ids[i]} if pred.ids is not None else {}
        if task == "sts":
            row["score"] = float(label)
        else:
            row["label"] = int(label)
            if p is not None and task == "para":
                row["prob_paraphrase"] = round(float(p), 6)
            elif p is not None:
                row["probs"] = [round(float(v), 6) for v in p]
        out.append(row)
    return out


def write_rows(stream: TextIO, task: str, pred: Predictions, fmt: str) -> int:
    """The rows as CSV (a header line, then one line per input) or JSON lines; returns how many."""
    if fmt not in FORMATS:
        raise ValueError(f"format is {fmt!r}, but must be one of: {', '.join(FORMATS)}")
    table = rows(task, pred)
    if fmt == "jsonl":
        stream.writelines(json.dumps(row) + "\n" for row in table)
        return len(table)
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns(task, pred.ids is not None))
    for row in table:
        probs = row.pop("probs", [])
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row.values()] + probs)
    return len(table)
