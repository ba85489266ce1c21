"""Metrics of the three tasks and the course's prediction files.

Metrics take predictions and gold labels as 1-D tensors, numpy arrays or sequences and return
Python floats, computed in float64:

- ``accuracy``: SST and CFIMDB sentiment, Quora paraphrase.
- ``binary_f1``: F1 of the positive class (paraphrase); 0.0 when nothing is positive in either
  the predictions or the gold labels (no true positive to find), as scikit-learn reports it.
- ``pearson`` / ``spearman``: STS. Both are NaN when either side is constant (the correlation is
  undefined: zero variance) or holds a NaN (a diverged model); they never raise for those.
- ``overall_score``: the course leaderboard's (sst_acc + para_acc + (1 + sts_pearson) / 2) / 3,
  with a NaN correlation counted as 0: a constant predictor carries no linear information, and a
  search needs a finite objective to rank trials by.
- ``confusion_matrix``: rows are gold classes, columns predicted ones.

Prediction files are those of the course's starter code (``multitask_classifier.py``): a header
``"id \\t Predicted_Sentiment \\n"`` and one ``f"{id} , {prediction} \\n"`` line per example.
Labels are written as the starter writes them: sentiment as an integer (``3``), paraphrase as a
float (``1.0``), similarity as Python's shortest round-trip float (the STS header keeps the
starter's spelling, ``Predicted_Similiary``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

if TYPE_CHECKING:
    import numpy as np

ArrayLike = Union[torch.Tensor, "np.ndarray", Sequence[float]]

SST_CLASSES = 5

# task -> (header column, file-name prefix, labels or None for a real value)
PREDICTION_FORMATS: dict[str, tuple[str, str, tuple[int, ...] | None]] = {
    "sst": ("Predicted_Sentiment", "sst", tuple(range(SST_CLASSES))),
    "cfimdb": ("Predicted_Sentiment", "cfimdb", (0, 1)),
    "para": ("Predicted_Is_Paraphrase", "para", (0, 1)),
    "sts": ("Predicted_Similiary", "sts", None),
}
SPLITS = ("dev", "test")


def accuracy(pred: ArrayLike, gold: ArrayLike) -> float:
    p, g = _pair(pred, gold)
    return (p == g).double().mean().item()


def binary_f1(pred: ArrayLike, gold: ArrayLike) -> float:
    """F1 of label 1: 2TP / (2TP + FP + FN)."""
    p, g = _pair(pred, gold)
    _check_labels("pred", p, (0, 1))
    _check_labels("gold", g, (0, 1))
    tp = ((p == 1) & (g == 1)).sum().item()
    wrong = (p != g).sum().item()  # FP + FN
    return 2 * tp / (2 * tp + wrong) if tp or wrong else 0.0


def pearson(pred: ArrayLike, gold: ArrayLike) -> float:
    p, g = _pair(pred, gold)
    if _undefined(p) or _undefined(g):
        return math.nan
    dp, dg = p - p.mean(), g - g.mean()
    r = (dp @ dg) / torch.sqrt((dp @ dp) * (dg @ dg))
    return r.clamp(-1.0, 1.0).item()  # rounding can overshoot by an ulp


def spearman(pred: ArrayLike, gold: ArrayLike) -> float:
    """Pearson correlation of the ranks; tied values share their mean rank."""
    p, g = _pair(pred, gold)
    if _undefined(p) or _undefined(g):
        return math.nan
    return pearson(_ranks(p), _ranks(g))


def overall_score(sst_acc: float, para_acc: float, sts_pearson: float) -> float:
    sts = 0.0 if math.isnan(sts_pearson) else sts_pearson
    return (sst_acc + para_acc + (1.0 + sts) / 2.0) / 3.0


def confusion_matrix(pred: ArrayLike, gold: ArrayLike, num_classes: int = SST_CLASSES) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; [i, j] = examples of gold class i predicted as j."""
    p, g = _pair(pred, gold)
    classes = tuple(range(num_classes))
    _check_labels("pred", p, classes)
    _check_labels("gold", g, classes)
    flat = g.long() * num_classes + p.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


@dataclass(frozen=True)
class Scores:
    """Dev metrics of one evaluation; ``as_dict()`` adds ``overall``."""

    sst_acc: float
    para_acc: float
    para_f1: float
    sts_pearson: float
    sts_spearman: float

    @classmethod
    def compute(
        cls,
        *,
        sst: tuple[ArrayLike, ArrayLike],
        para: tuple[ArrayLike, ArrayLike],
        sts: tuple[ArrayLike, ArrayLike],
    ) -> Scores:
        """Each argument is (predictions, gold labels)."""
        return cls(
            sst_acc=accuracy(*sst),
            para_acc=accuracy(*para),
            para_f1=binary_f1(*para),
            sts_pearson=pearson(*sts),
            sts_spearman=spearman(*sts),
        )

    @property
    def overall(self) -> float:
        return overall_score(self.sst_acc, self.para_acc, self.sts_pearson)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "overall": self.overall}


@dataclass(frozen=True)
class Predictions:
    """One prediction file: ids in file order and their predictions (int labels, or floats for sts)."""

    task: str
    ids: list[str]
    values: list[int] | list[float]

    def as_dict(self) -> dict[str, int | float]:
        return dict(zip(self.ids, self.values))


def prediction_filename(task: str, split: str) -> str:
    """The starter code's name, e.g. ``sst-dev-output.csv`` or ``para-test-output.csv``."""
    _, prefix, _ = _format(task)
    if split not in SPLITS:
        raise ValueError(f"split is {split!r}, but must be one of: {', '.join(SPLITS)}")
    return f"{prefix}-{split}-output.csv"


def write_predictions(path: str | Path, task: str, ids: Sequence[str], predictions: ArrayLike) -> Path:
    """Write one task's predictions in the starter code's format; returns ``path``."""
    column, _, labels = _format(task)
    ids = [str(i) for i in ids]
    values = _vector("predictions", predictions)
    if len(ids) != len(values):
        raise ValueError(f"ids has {len(ids)} entries, but predictions has {len(values)}; they must match")
    for i in ids:
        if not i or any(c in i for c in " \t,\n"):
            raise ValueError(f"id {i!r} holds a space, tab, comma or newline, which the file format cannot carry")
    if labels is not None:
        _check_labels("predictions", values, labels)
    text = [_header(column)]
    text += [f"{i} , {_render(task, v)} \n" for i, v in zip(ids, values.tolist())]
    path = Path(path)
    path.write_text("".join(text), encoding="utf-8")
    return path


def write_submission(
    directory: str | Path, split: str, predictions: Mapping[str, tuple[Sequence[str], ArrayLike]]
) -> dict[str, Path]:
    """Write ``{task: (ids, predictions)}`` for one split under the starter code's file names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        task: write_predictions(directory / prediction_filename(task, split), task, ids, values)
        for task, (ids, values) in predictions.items()
    }


def read_predictions(path: str | Path, task: str) -> Predictions:
    """Read a file written by ``write_predictions`` or by the starter code."""
    column, _, labels = _format(task)
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    header = lines[0].split("\t") if lines else []
    if len(header) != 2 or header[0].strip() != "id" or header[1].strip() != column:
        first, expected = (lines[0] if lines else ""), _header(column).rstrip("\n")
        raise ValueError(f"{path}: header is {first!r}, but a {task} prediction file starts with {expected!r}")
    ids: list[str] = []
    values: list[int] | list[float] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != 2 or not fields[0].strip():
            raise ValueError(f"{path}:{number}: line is {line!r}, but must read '<id> , <prediction> '")
        ident, raw = fields[0].strip(), fields[1].strip()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{path}:{number}: prediction is {raw!r}, but must be a number") from None
        if labels is not None:
            if value not in labels:
                allowed = ", ".join(map(str, labels))
                raise ValueError(f"{path}:{number}: prediction is {raw!r}, but must be one of: {allowed}")
            value = int(value)
        ids.append(ident)
        values.append(value)  # type: ignore[arg-type]
    if len(set(ids)) != len(ids):
        twice = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"{path}: ids appear more than once: {', '.join(twice[:5])}")
    return Predictions(task=task, ids=ids, values=values)


def _format(task: str) -> tuple[str, str, tuple[int, ...] | None]:
    try:
        return PREDICTION_FORMATS[task]
    except KeyError:
        raise ValueError(f"task is {task!r}, but must be one of: {', '.join(PREDICTION_FORMATS)}") from None


def _header(column: str) -> str:
    return f"id \t {column} \n"


def _render(task: str, value: float) -> str:
    if task == "sts":
        return repr(float(value))  # shortest string that reads back as the same float
    if task == "para":
        return str(float(value))  # the starter writes sigmoid().round(): 0.0 / 1.0
    return str(int(value))


def _vector(name: str, values: ArrayLike) -> torch.Tensor:
    # Straight to float64: lists would otherwise pass through torch's default float32.
    if isinstance(values, torch.Tensor):
        t = values.detach().to("cpu", torch.float64)
    else:
        t = torch.as_tensor(values, dtype=torch.float64)
    if t.dim() != 1:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, but must be 1-D")
    return t


def _pair(pred: ArrayLike, gold: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _vector("pred", pred), _vector("gold", gold)
    if len(p) != len(g):
        raise ValueError(f"pred has {len(p)} entries, but gold has {len(g)}; they must match")
    if len(p) == 0:
        raise ValueError("pred and gold are empty, but a metric needs at least one example")
    return p, g


def _check_labels(name: str, values: torch.Tensor, labels: tuple[int, ...]) -> None:
    bad = ~torch.isin(values, torch.tensor(labels, dtype=values.dtype))
    if bad.any():
        allowed = ", ".join(map(str, labels))
        raise ValueError(f"{name} holds {values[bad][0].item()!r}, but labels must be one of: {allowed}")


def _undefined(x: torch.Tensor) -> bool:
    # Compared, not measured: a constant vector's float mean can differ from its value by an ulp,
    # which would turn zero variance into a spurious correlation.
    return bool(torch.isnan(x).any()) or bool(x.max() == x.min())


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties given the mean of the ranks they span."""
    values, order = torch.sort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0)
    mean_rank = (last - counts + 1 + last).double() / 2  # mean of first and last rank of each tie group
    ranks = torch.empty_like(x)
    ranks[order] = mean_rank[inverse]
    return ranks


def is_score(value: Any) -> bool:
    """A number that can be ranked: not None, not NaN, not infinite."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity inside it replaced by None (JSON's null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON that every parser reads: NaN and infinities (a Pearson r of constant predictions, say)
    as null, where Python's json writes ``NaN``."""
    return json.dumps(finite(value), allow_nan=False, default=str, **kwargs)
