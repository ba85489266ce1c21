"""Ensembles: the predictions of several models combined per task, the members chosen on dev.

A member's output for a task is one value per example, stacked over M members:

- ``sst``  (M, N, 5) class probabilities
- ``para`` (M, N)    P(paraphrase)
- ``sts``  (M, N)    similarity score in [0, 5]

A rule (``RULES[task]``, by name) turns those and member weights (M,) into labels (N,)
in label space, as ``labels`` does for one member:

- sst ``mean_probs``: the weighted mean of the class probabilities, then its argmax;
- sst ``round_mean``: paper 002's ensemble: the weighted mean of each member's predicted class,
  rounded to the nearest class (a mean exactly between two classes goes to the even one, as
  ``torch.round`` and ``numpy.round`` do);
- para ``mean``: the weighted mean probability, above 0.5 is a paraphrase;
- para ``vote``: paper 002's weighted majority of the members' labels; a tie goes as ``mean`` says;
- sts ``mean``: the weighted mean score.

``greedy_select`` is Caruana et al. 2004 (*Ensemble Selection from Libraries of Models*): forward
selection with replacement. It starts from the best single member and adds, one at a time, the
member that raises the dev score most, a member already in counting again (so weights are the
times each was picked); it stops when no addition raises the score, or after ``max_rounds`` picks.
The ensemble's dev score is therefore never below its best member's. Tasks are selected
separately: ``overall`` is a sum of one term per task (``task_score``), so the best combination
per task is the best overall.

An ensemble folder (what ``mtbert-search ensemble --out`` writes) is read back by ``read_ensemble``
from its ``report.json``: each member's checkpoint, and per task the rule and the times each member
was picked (its weight), so ``mtbert-train predict`` applies an ensemble as it was chosen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mtbert.evaluate import accuracy, pearson
from mtbert.registry import Registry
from mtbert.tasks import TASKS

DEFAULT_ROUNDS = 25
DEFAULT_RULES = {"sst": "mean_probs", "para": "mean", "sts": "mean"}
REPORT_FILE = "report.json"  # in an ensemble folder: members, weights, rules, scores

Rule = Callable[[Tensor, Tensor], Tensor]  # (outputs (M, N, ...), weights (M,)) -> labels (N,)
RULES: dict[str, Registry[Rule]] = {task: Registry(f"{task} combiner") for task in TASKS}


def labels(task: str, output: Tensor) -> Tensor:
    """One member's labels (N,) from its output: sst argmax class, para 0/1, sts the score."""
    if task == "sst":
        return output.argmax(dim=-1)
    if task == "para":
        return (output > 0.5).long()
    return output


def combine(task: str, name: str, outputs: Tensor, weights: Tensor) -> Tensor:
    """Labels (N,) of the members' ``outputs`` (M, N, ...) combined by ``RULES[task][name]``."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (len(outputs),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights are {w.tolist()}, but must be {len(outputs)} non-negative numbers, not all 0")
    used = w > 0  # members weighted 0 take no part (a NaN among them would spoil the sums)
    return _registry(task).get(name)(outputs[used].double(), w[used] / w.sum())


def mean_output(outputs: Tensor, weights: Tensor) -> Tensor:
    """The members' weighted mean output (N, ...): sst class probabilities, para P(paraphrase), sts
    score; what ``mtbert-train predict`` shows beside an ensemble's labels (which come from ``combine``)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    used = w > 0
    return _mean(outputs[used].double(), w[used] / w.sum())


def _mean(outputs: Tensor, w: Tensor) -> Tensor:
    return torch.tensordot(w, outputs, dims=1)  # (N, ...)


@RULES["sst"].register("mean_probs")
def sst_mean_probs(outputs: Tensor, w: Tensor) -> Tensor:
    return _mean(outputs, w).argmax(dim=-1)


@RULES["sst"].register("round_mean")
def sst_round_mean(outputs: Tensor, w: Tensor) -> Tensor:
    classes = outputs.argmax(dim=-1).double()  # (M, N)
    return torch.round(_mean(classes, w)).long()


@RULES["para"].register("mean")
def para_mean(outputs: Tensor, w: Tensor) -> Tensor:
    return (_mean(outputs, w) > 0.5).long()


@RULES["para"].register("vote")
def para_vote(outputs: Tensor, w: Tensor) -> Tensor:
    share = _mean((outputs > 0.5).double(), w)  # (N,) weighted share of members saying "paraphrase"
    # compared with a tolerance: weights that sum to 1 leave a tie an ulp off 0.5
    tie = (share - 0.5).abs() < 1e-9
    return torch.where(tie, para_mean(outputs, w), (share > 0.5).long())


@RULES["sts"].register("mean")
def sts_mean(outputs: Tensor, w: Tensor) -> Tensor:
    return _mean(outputs, w)


def task_score(task: str, pred: Tensor, gold: Tensor) -> float:
    """What a task adds to ``overall``: sst and para accuracy, sts Pearson r (NaN counted as 0, as
    ``mtbert.evaluate.overall_score`` counts it)."""
    if task == "sts":
        r = pearson(pred, gold)
        return 0.0 if math.isnan(r) else r
    return accuracy(pred, gold)


@dataclass(frozen=True)
class Selection:
    counts: tuple[int, ...]  # times each member was picked; its weight is count / sum(counts)
    score: float  # dev score of the combination (``task_score``)
    history: tuple[float, ...]  # the score after each pick; the first is the best single member's

    @property
    def weights(self) -> tuple[float, ...]:
        total = sum(self.counts)
        return tuple(c / total for c in self.counts)


def greedy_select(task: str, outputs: Tensor, gold: Tensor, combiner: str | None = None,
                  max_rounds: int = DEFAULT_ROUNDS) -> Selection:  # fmt: skip
    """Caruana et al.'s forward selection with replacement on dev (see the module docstring).
    ``outputs`` (M, N, ...) of M members, ``gold`` (N,) dev labels; ties go to the earlier member."""
    if max_rounds < 1:
        raise ValueError(f"max_rounds is {max_rounds}, but must be >= 1")
    if len(outputs) == 0:
        raise ValueError("outputs hold no member; an ensemble needs at least one")
    name = combiner or DEFAULT_RULES[task]
    _registry(task).get(name)  # an unknown name fails before any work

    def value(counts: Tensor) -> float:
        return task_score(task, combine(task, name, outputs, counts), gold)

    m = len(outputs)
    singles = [value(torch.eye(m, dtype=torch.float64)[i]) for i in range(m)]
    first = max(range(m), key=lambda i: (singles[i], -i))
    counts = torch.zeros(m, dtype=torch.float64)
    counts[first] = 1
    history = [singles[first]]
    while len(history) < max_rounds:
        tried = [value(counts + torch.eye(m, dtype=torch.float64)[i]) for i in range(m)]
        pick = max(range(m), key=lambda i: (tried[i], -i))
        if not tried[pick] > history[-1]:
            break
        counts[pick] += 1
        history.append(tried[pick])
    return Selection(tuple(int(c) for c in counts.tolist()), history[-1], tuple(history))


def _registry(task: str) -> Registry[Rule]:
    if task not in RULES:
        raise ValueError(f"task is {task!r}, but must be one of: {', '.join(TASKS)}")
    return RULES[task]


# ---- an ensemble folder --------------------------------------------------------------------------


class EnsembleError(ValueError):
    """An ensemble folder that cannot be used; the message names the file and what is expected."""


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble folder as ``report.json`` records it."""

    folder: Path
    checkpoints: dict[str, Path]  # member name -> its checkpoint
    counts: dict[str, dict[str, int]]  # task -> {member name: times picked}; the weights are their shares
    rules: dict[str, str]  # task -> the rule (``RULES[task]``)
    report: dict

    def members(self, task: str) -> list[tuple[str, Path, int]]:
        """(name, checkpoint, count) of the members ``task`` uses, in ``report.json``'s order."""
        return [(n, self.checkpoints[n], self.counts[task][n]) for n in self.checkpoints if self.counts[task].get(n)]


def read_ensemble(folder: str | Path) -> EnsembleSpec:
    """The members, counts and rules of an ensemble folder; ``EnsembleError`` naming ``report.json``
    and what is wrong if it does not read (no checkpoint is opened here)."""
    path = Path(folder) / REPORT_FILE
    expects = ("expected the report.json that 'mtbert-search ensemble' writes (members with their checkpoints; "
               "ensemble.counts and combiners per task)")  # fmt: skip
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnsembleError(f"{path} does not read ({e}); {expects}") from None
    try:
        checkpoints = {str(m["name"]): Path(m["checkpoint"]) for m in report["members"]}
        counts = {t: {str(n): int(c) for n, c in report["ensemble"]["counts"][t].items()} for t in TASKS}
        rules = {t: str(report["combiners"][t]) for t in TASKS}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EnsembleError(f"{path} lacks {e} or holds it in another shape; {expects}") from None
    for task in TASKS:
        if rules[task] not in _registry(task):
            raise EnsembleError(f"{path}: combiners.{task} is {rules[task]!r}, but must be one of: "
                                f"{', '.join(_registry(task))}")  # fmt: skip
        unknown = [n for n in counts[task] if n not in checkpoints]
        if unknown or sum(counts[task].values()) <= 0 or any(c < 0 for c in counts[task].values()):
            raise EnsembleError(f"{path}: ensemble.counts.{task} is {counts[task]}, but must give members listed "
                                "under members a non-negative count each, not all 0")  # fmt: skip
    return EnsembleSpec(Path(folder), checkpoints, counts, rules, report)
