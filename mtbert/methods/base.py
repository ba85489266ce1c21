"""What every gradient combiner shares: the ``COMBINERS`` registry, the ``Combiner`` base, the
``Surgery`` base of the methods that mix per-task gradients, and the math they use (Gram matrix,
conflict diagnostics). Each method is a module of its own beside this one.

The trainer hands one loss per task to the combiner named by ``grad.method``, which leaves the
combined gradient in every parameter's ``.grad``; heads are reached by their own task's loss only and
keep its gradient.

Per-task gradients of the shared encoder (for PCGrad and the other surgery methods, and for the
conflict diagnostics of every combiner) cost no extra FLOPs: each task's loss depends only on its
own batch, so one backward per task does the work of one backward of the sum. They land in one
(rows, P) buffer allocated once per combiner: before each task's backward, every shared parameter's
``.grad`` points at a view into that task's row, so autograd accumulates straight into the buffer.
A combination is T coefficients computed from the T x T Gram matrix of the rows, mixed in place
into row 0, and ``.grad`` then points at views of row 0: nothing of size P is copied per step.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtbert.config.run import RunConfig
from mtbert.config.sections import GradConfig, OptimConfig
from mtbert.registry import Registry
from mtbert.tasks import TASKS

COMBINERS: Registry[type[Combiner]] = Registry("grad.method")


def task_order(losses: Mapping[str, Any]) -> list[str]:
    """The tasks of a step in ``TASKS`` order (rows of the gradient buffer, diagnostic key names)."""
    if not losses:
        raise ValueError("losses is empty; a step needs the loss of at least one task")
    unknown = [t for t in losses if t not in TASKS]
    if unknown:
        raise ValueError(f"losses has task {unknown[0]!r}, but tasks are: {', '.join(TASKS)}")
    return [t for t in TASKS if t in losses]


def gram_matrix(rows: Tensor) -> Tensor:
    """(T, T) float64 dot products of the rows (T, P). One matrix-vector pass per row: on CPU BLAS
    that is several times faster than one (T, P) x (P, T) matmul, whose P is in the millions."""
    T = rows.shape[0]
    gram = torch.empty(T, T, dtype=torch.float64)
    for i in range(T):
        col = (rows[i:] @ rows[i]).double().cpu()  # gram[i:, i]
        gram[i:, i] = col
        gram[i, i:] = col
    return gram


def conflict_diagnostics(tasks: list[str], gram: Tensor) -> dict[str, float]:
    """``grad_cos_<a>_<b>`` of each task pair and ``grad_conflict_frac`` (the fraction of pairs with a
    negative cosine), from the Gram matrix of the task gradients (rows in ``tasks`` order)."""
    g = gram.double()
    norm = g.diagonal().clamp_min(0).sqrt().tolist()
    cos = {}
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            denom = norm[i] * norm[j]  # a zero gradient (e.g. a task weighted 0) conflicts with nothing
            cos[f"grad_cos_{tasks[i]}_{tasks[j]}"] = g[i, j].item() / denom if denom > 0 else 0.0
    if not cos:
        return {}
    return {**cos, "grad_conflict_frac": sum(v < 0 for v in cos.values()) / len(cos)}


class Combiner:
    """Base: ``backward(losses, counts)`` fills ``.grad`` and returns diagnostics (may be empty).

    ``shared`` are the encoder parameters every task's loss reaches; head parameters are reached
    by their own task's loss only. ``counts`` holds each task's number of examples in the step.
    """

    def __init__(self, config: GradConfig, shared: list[nn.Parameter], generator: torch.Generator):
        self.config = config
        self.shared = shared
        self.generator = generator
        self._buffer: Tensor | None = None  # (rows, P) per-task gradients, allocated on first use
        self._views: list[list[Tensor]] = []  # per buffer row: one view per shared parameter

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int], diagnose: bool = False) -> dict[str, float]:
        """With ``diagnose``, the returned dict also holds the gradient-conflict figures of this
        step (``grad_cos_<a>_<b>`` per task pair, ``grad_conflict_frac``)."""
        raise NotImplementedError

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Raise ``ConfigError`` for ``grad`` settings this method cannot run with (none by default);
        ``mtbert.validation`` calls it for the method ``grad.method`` names."""

    def param_groups(self, optim: OptimConfig) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the combiner's own learnable parameters (none by default)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the generator (running averages, learned weights)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- shared machinery --------------------------------------------------------------------------
    def task_gradients(self, losses: list[Tensor]) -> tuple[Tensor, list[bool]]:
        """``(rows, reached)``: rows[i] (a view of the buffer, (T, P)) is the gradient of losses[i]
        w.r.t. the shared parameters, flattened in ``shared`` order; reached[k] says whether any loss
        reached shared[k]. Other parameters (heads) accumulate in their ``.grad`` as usual. Each loss
        is backpropagated once (its graph freed), so the graphs must be disjoint, as the trainer's are."""
        rows = self._rows(len(losses))
        rows.zero_()
        reached = [False] * len(self.shared)
        # Unreached parameters (the pooler under cls pooling) must end with .grad None, as after one
        # backward of the sum, or the optimizer would decay them; hooks record which were reached.
        hooks = [p.register_post_accumulate_grad_hook(lambda _, k=k: reached.__setitem__(k, True))
                 for k, p in enumerate(self.shared)]  # fmt: skip
        try:
            for i, loss in enumerate(losses):
                for p, view in zip(self.shared, self._views[i]):
                    p.grad = view  # autograd adds into it in place: no copy
                loss.backward()
        finally:
            for h in hooks:
                h.remove()
        return rows, reached

    def write_back(self, rows: Tensor, coefficients: Tensor, reached: list[bool]) -> None:
        """Leave ``sum_i coefficients[i] * rows[i]`` in the shared parameters' ``.grad``; computed in
        place in rows[0], which the next step's ``task_gradients`` zeroes again."""
        c = coefficients.tolist()
        out = rows[0]
        if c[0] != 1.0:
            out.mul_(c[0])
        for i in range(1, len(c)):
            out.add_(rows[i], alpha=c[i])
        for p, view, hit in zip(self.shared, self._views[0], reached):
            p.grad = view if hit else None

    def backward_sum(self, terms: dict[str, Tensor], diagnose: bool) -> dict[str, float]:
        """``.grad`` of the sum of ``terms`` (one scalar per task). Without ``diagnose`` that is one
        backward of the sum; with it, one backward per task, so the diagnostics can be read."""
        if not diagnose or len(terms) < 2:
            torch.stack(list(terms.values())).sum().backward()
            return {}
        tasks = task_order(terms)
        rows, reached = self.task_gradients([terms[t] for t in tasks])
        stats = conflict_diagnostics(tasks, gram_matrix(rows))
        self.write_back(rows, torch.ones(len(tasks)), reached)
        return stats

    def _rows(self, n: int) -> Tensor:
        if self._buffer is None or self._buffer.shape[0] < n:
            kinds = {(p.dtype, p.device) for p in self.shared} or {(torch.float32, torch.device("cpu"))}
            if len(kinds) > 1:
                raise ValueError(f"grad.method {self.config.method!r} needs one dtype and device, got {kinds}")
            dtype, device = kinds.pop()
            self._buffer = torch.empty(
                max(n, len(TASKS)), sum(p.numel() for p in self.shared), dtype=dtype, device=device
            )
            offsets = [0, *itertools.accumulate(p.numel() for p in self.shared)]
            self._views = [
                [row[o : o + p.numel()].view_as(p) for p, o in zip(self.shared, offsets)] for row in self._buffer
            ]
        return self._buffer[:n]


class Surgery(Combiner):
    """Combiners that mix the per-task gradients of the shared parameters with T coefficients read
    off their Gram matrix (``mix``); the heads keep their own task's gradient."""

    def mix(self, tasks: list[str], counts: Mapping[str, int], gram: Tensor) -> Tensor:
        """(T,) float64 coefficients of the update in terms of the task gradients (rows of ``gram``)."""
        raise NotImplementedError

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int], diagnose: bool = False) -> dict[str, float]:
        tasks = task_order(losses)
        if len(tasks) == 1:  # nothing to project against: one plain backward, the shared part scaled
            scale = self.mix(tasks, counts, torch.ones(1, 1, dtype=torch.float64)).item()
            losses[tasks[0]].backward()
            if scale != 1.0:
                for p in self.shared:
                    if p.grad is not None:
                        p.grad.mul_(scale)
            return {}
        rows, reached = self.task_gradients([losses[t] for t in tasks])
        gram = gram_matrix(rows)  # (T, T): all the projections need
        stats = conflict_diagnostics(tasks, gram) if diagnose else {}
        self.write_back(rows, self.mix(tasks, counts, gram), reached)
        return stats
