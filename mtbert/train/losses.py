"""Task losses, chosen per task by kind (``LossSpec(kind, weight, options)``); each loss names the
head output it reads (``needs``), and ``build_loss`` refuses a head that does not provide it.

- ``ce``: cross-entropy on class logits, with ``label_smoothing``. On the sts ``bins`` head
  (paper 004) the float score becomes a target over the bins: by default (``bin_targets="soft"``)
  split between the two nearest bin centres so that the target's expected score is the label
  itself (3.3 -> 0.7 on bin 3, 0.3 on bin 4); ``"nearest"`` puts it all on the closest bin, the
  rounded-label classes of paper 004, which cannot tell 2.6 from 3.4.
- ``bce``: binary cross-entropy on the para logit (papers 000, 001).
- ``mse`` and ``l1`` (paper 003) on the sts score.
- ``cosine_mse`` (paper 001, after Sentence-BERT): MSE between cos(u, v) and the label mapped
  linearly onto [``low``, 1], label 0 -> ``low`` (-1 by default: the full cosine range, the same
  map as the sts ``cosine`` head's score; paper 004 blames the [0, 1] target for pushing dissimilar
  pairs to exactly orthogonal).
- ``mnr`` (paper 001; Henderson et al. 2017): multiple-negatives ranking over the batch's
  positive pairs (label >= ``threshold`` * the task's top label): u_i must pick v_i out of all
  positive v_j, by softmax over ``scale`` * cos(u_i, v_j).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mtbert.config.run import RunConfig
from mtbert.config.sections import LossConfig
from mtbert.errors import one_of
from mtbert.model.heads import HEADS, Head, HeadOutput, encoding_problem, head_class
from mtbert.registry import Registry

NEEDS = {  # what a loss may need from a head, as said in errors
    "class_logits": "class logits",
    "logit": "a binary logit",
    "score": "a score",
    "embeddings": "sentence embeddings (u, v)",
}


@dataclass(frozen=True)
class LossSpec:
    kind: str
    weight: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)


class Loss:
    """Options are dataclass fields; ``__call__`` gets the head output, the (B,) labels and the
    task's top label (1 for para, 5 for sts)."""

    needs: ClassVar[str]

    def check(self, key: str) -> None:
        """Raise ValueError naming ``key.option`` for an option value out of range."""

    def __call__(self, out: HeadOutput, labels: Tensor, label_max: float) -> Tensor:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss")  # one for all tasks: the heads' outputs decide the fit


def soft_bin_targets(labels: Tensor, centres: Tensor) -> Tensor:
    """(B,) scores, (K,) increasing centres -> (B, K) targets on the two nearest centres whose
    expected score is the (clamped) label."""
    y = labels.clamp(centres[0], centres[-1])
    hi = torch.searchsorted(centres, y, right=True).clamp(1, len(centres) - 1)  # (B,) upper neighbour
    lo = hi - 1
    w_hi = (y - centres[lo]) / (centres[hi] - centres[lo])  # (B,) in [0, 1]
    targets = torch.zeros(len(y), len(centres), dtype=y.dtype, device=y.device)
    targets.scatter_(1, lo[:, None], (1 - w_hi)[:, None])
    return targets.scatter_add(1, hi[:, None], w_hi[:, None])


@LOSSES.register("ce")
@dataclass(frozen=True)
class CrossEntropy(Loss):
    needs: ClassVar[str] = "class_logits"
    label_smoothing: float = 0.0
    bin_targets: str = "soft"

    def check(self, key: str) -> None:
        _in_range(key, "label_smoothing", self.label_smoothing, 0.0, 1.0)
        if self.bin_targets not in ("soft", "nearest"):
            raise ValueError(f"{key}.bin_targets is {self.bin_targets!r}, but {one_of(('nearest', 'soft'))}")

    def __call__(self, out: HeadOutput, labels: Tensor, label_max: float) -> Tensor:
        centres = out.bin_centres
        if centres is None:  # labels are class indices
            target = labels.long()  # (B,)
        elif self.bin_targets == "soft":
            target = soft_bin_targets(labels.to(centres.dtype), centres)  # (B, K) probabilities
        else:
            target = (labels.to(centres.dtype)[:, None] - centres).abs().argmin(dim=-1)  # (B,)
        return F.cross_entropy(out.logits, target, label_smoothing=self.label_smoothing)


@LOSSES.register("bce")
@dataclass(frozen=True)
class BinaryCrossEntropy(Loss):
    needs: ClassVar[str] = "logit"

    def __call__(self, out: HeadOutput, labels: Tensor, label_max: float) -> Tensor:
        return F.binary_cross_entropy_with_logits(out.logits, labels.to(out.logits.dtype))


@LOSSES.register("mse")
@dataclass(frozen=True)
class MeanSquaredError(Loss):
    needs: ClassVar[str] = "score"

    def __call__(self, out: HeadOutput, labels: Tensor, label_max: float) -> Tensor:
        return F.mse_loss(out.score, labels.to(out.score.dtype))


@LOSSES.register("l1")
@dataclass(frozen=True)
class L1(Loss):
    needs: ClassVar[str] = "score"

    def __call__(self, out: HeadOutput, labels: Tensor, label_max: float) -> Tensor:
        return F.l1_loss(out.score, labels.to(out.score.dtype))


@LOSSES.register("cosine_mse")
@dataclass(frozen=True)
class CosineMSE(Loss):
    needs: ClassVar[str] = "embeddings"
    low: float = -1.0  # the cosine that label 0 asks for; label_max asks for 1

    def check(self, key: str) -> None:
        _in_range(key, "low", self.low, -1.0, 1.0)

    def __call__(self, out: HeadOutput, labels: Tensor, label_max: float) -> Tensor:
        cos = F.cosine_similarity(out.u, out.v, dim=-1)  # (B,)
        target = self.low + (1.0 - self.low) * labels.to(cos.dtype) / label_max  # (B,) in [low, 1]
        return F.mse_loss(cos, target)


@LOSSES.register("mnr")
@dataclass(frozen=True)
class MultipleNegativesRanking(Loss):
    needs: ClassVar[str] = "embeddings"
    scale: float = 20.0  # inverse temperature on cosines in [-1, 1]
    threshold: float = 0.8  # positives: label >= threshold * label_max (para 1s; sts scores >= 4)

    def check(self, key: str) -> None:
        if not self.scale > 0:
            raise ValueError(f"{key}.scale is {self.scale}, but must be > 0")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"{key}.threshold is {self.threshold}, but must be in (0, 1]")

    def __call__(self, out: HeadOutput, labels: Tensor, label_max: float) -> Tensor:
        positive = labels >= self.threshold * label_max  # (B,)
        u = F.normalize(out.u[positive], dim=-1)  # (K, D)
        v = F.normalize(out.v[positive], dim=-1)  # (K, D)
        if len(u) == 0:  # no positive pair in this batch: nothing to rank, but keep the graph
            return out.u.sum() * 0.0
        sim = self.scale * u @ v.T  # (K, K): row i scores every positive v_j for u_i
        return F.cross_entropy(sim, torch.arange(len(u), device=sim.device))


@dataclass(frozen=True)
class TaskLoss:
    """A built loss for one task; calling it gives ``weight * loss``."""

    task: str
    loss: Loss
    weight: float
    label_max: float

    def __call__(self, out: HeadOutput, labels: Tensor) -> Tensor:
        return self.weight * self.loss(out, labels, self.label_max)


def compatible_losses(head: Head | type[Head]) -> list[str]:
    return [kind for kind in LOSSES if LOSSES.get(kind).needs in head.provides]


def loss_problem(task: str, head: Head | type[Head], kind: str) -> str | None:
    """Why loss ``kind`` cannot train ``task``'s ``head``, or None."""
    if kind not in LOSSES:
        return f"losses.{task}.kind: {LOSSES.unknown_message(kind)}"
    needs = LOSSES.get(kind).needs
    if needs in head.provides:
        return None
    fits = [k for k in HEADS[task] if needs in HEADS[task].get(k).provides]
    return (
        f"losses.{task}.kind {kind!r} needs {NEEDS[needs]}, but heads.{task}.kind {head.kind!r} gives "
        f"{', '.join(NEEDS[p] for p in sorted(head.provides))}; losses for {head.kind!r}: "
        f"{', '.join(compatible_losses(head))}; heads.{task} kinds for {kind!r}: {', '.join(fits) or 'none'}"
    )


def compatibility(task: str, head: Any, loss: Any, pair_encoding: str | None) -> str | None:
    """Why ``task``'s head (``head.kind``) cannot go with the loss (``loss.kind``) and the pair
    encoding, or None; for config checks before anything is built."""
    cls = head_class(task, head.kind)
    return encoding_problem(task, cls, pair_encoding) or loss_problem(task, cls, loss.kind)


def build_loss(task: str, head: Head | type[Head], spec: LossSpec) -> TaskLoss:
    """Check ``spec`` against ``task``'s ``head`` (an instance or a class) and build it."""
    key = f"losses.{task}"
    problem = loss_problem(task, head, spec.kind)
    if problem:
        raise ValueError(problem)
    if not (isinstance(spec.weight, (int, float)) and 0.0 <= spec.weight < float("inf")):
        raise ValueError(f"{key}.weight is {spec.weight!r}, but must be a finite number >= 0")
    cls = LOSSES.get(spec.kind)
    allowed = sorted(f.name for f in fields(cls))
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise ValueError(f"{key}.{unknown[0]} is not an option of loss {spec.kind!r}; "
                         f"choose from: {', '.join(allowed) or 'none (it takes no options)'}")
    loss = cls(**spec.options)
    loss.check(key)
    return TaskLoss(task=task, loss=loss, weight=float(spec.weight), label_max=head.label_max)


def task_loss(config: RunConfig, task: str, head: Head | type[Head]) -> TaskLoss:
    """``losses.<task>`` of a run config built for ``task``'s ``head``: each loss takes the options
    of ``LossConfig`` that are its own dataclass fields."""
    cfg: LossConfig = getattr(config.losses, task)
    options = {f.name for f in fields(LOSSES.get(cfg.kind))}
    spec = LossSpec(cfg.kind, cfg.weight, {k: getattr(cfg, k) for k in options if hasattr(cfg, k)})
    return build_loss(task, head, spec)


def _in_range(key: str, name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, (int, float)) and low <= value < high):
        raise ValueError(f"{key}.{name} is {value!r}, but must be in [{low:g}, {high:g})")
