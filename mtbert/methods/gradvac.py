"""GradVac: Wang et al., *Gradient Vaccine: Investigating and Improving Multi-task Optimization in
Massively Multilingual Models*, ICLR 2021 (Algorithm 1).

PCGrad acts only on negative cosines (a target of 0). GradVac keeps a target cosine for each pair
of tasks, an exponential moving average of the cosines seen in training (rate beta =
``grad.gradvac_beta``, starting at 0), and whenever a pair's cosine phi falls below its target
phi^, adds the multiple of g_j that lifts cos(g_i', g_j) to the target exactly:

    g_i' += ||g_i'|| (phi^ sqrt(1 - phi^2) - phi sqrt(1 - phi^^2)) / (||g_j|| sqrt(1 - phi^^2)) g_j

Pairs at or above their target are left alone. For each task i, the others j are visited in a random
order (``torch.randperm(T)`` per i from the combiner's generator, i skipped); g_i' carries the earlier
adjustments; the target of (i, j) then moves towards the cosine phi seen before adjusting; the update
is sum_i g_i'. Targets are kept per ordered pair of ``TASKS`` and saved in checkpoints, so a resumed
run continues exactly. This is the paper's whole-model granularity (one target per pair for all
shared parameters), computed from the Gram matrix of the task gradients alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtbert.config.sections import GradConfig
from mtbert.methods.base import COMBINERS, Surgery, gram_matrix
from mtbert.tasks import TASKS


def gradvac_coefficients(
    gram: Tensor, targets: Tensor, beta: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(M, new_targets)``: g_i' = sum_j M[i, j] g_j (M is (T, T)), and the updated (T, T) targets.
    Without a generator the others are visited in index order."""
    T = gram.shape[0]
    A = gram.double()
    targets = targets.double().clone()
    M = torch.eye(T, dtype=torch.float64)
    for i in range(T):
        order = range(T) if generator is None else torch.randperm(T, generator=generator).tolist()
        for j in order:
            norm_i, norm_j = math.sqrt(max(float(M[i] @ A @ M[i]), 0.0)), math.sqrt(max(float(A[j, j]), 0.0))
            if j == i or norm_i == 0 or norm_j == 0:  # a zero gradient has no direction to vaccinate
                continue
            phi = max(-1.0, min(1.0, float(M[i] @ A[:, j]) / (norm_i * norm_j)))
            target = float(targets[i, j])
            if phi < target < 1:
                lift = target * math.sqrt(1 - phi * phi) - phi * math.sqrt(1 - target * target)
                M[i, j] += norm_i * lift / (norm_j * math.sqrt(1 - target * target))
            targets[i, j] = (1 - beta) * target + beta * phi
    return M, targets


def vaccinate(
    grads: Tensor, targets: Tensor, beta: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(vaccinated, new_targets)``: the adjusted task gradients g_i' (T, P) of ``grads`` (T, P)
    and the updated targets (T, T); the GradVac update is ``vaccinated.sum(0)``."""
    if grads.ndim != 2 or grads.shape[0] < 1:
        raise ValueError(f"grads has shape {tuple(grads.shape)}, but must be (T, P) with T >= 1 tasks")
    T = grads.shape[0]
    if targets.shape != (T, T) or not bool(((targets >= -1) & (targets <= 1)).all()):
        raise ValueError(f"targets is {targets.tolist()}, but must be a ({T}, {T}) matrix of cosines in [-1, 1]")
    if not 0 <= beta <= 1:
        raise ValueError(f"grad.gradvac_beta is {beta!r}, but must be in [0, 1]")
    M, new = gradvac_coefficients(gram_matrix(grads), targets, beta, generator)
    return M.to(grads.dtype) @ grads, new


@COMBINERS.register("gradvac")
class GradVac(Surgery):
    """GradVac on the encoder; its state is the (TASKS x TASKS) matrix of target cosines."""

    def __init__(self, config: GradConfig, shared: list[nn.Parameter], generator: torch.Generator):
        super().__init__(config, shared, generator)
        self.targets = torch.zeros(len(TASKS), len(TASKS), dtype=torch.float64)

    def mix(self, tasks: list[str], counts: Mapping[str, int], gram: Tensor) -> Tensor:
        idx = torch.tensor([TASKS.index(t) for t in tasks])
        M, new = gradvac_coefficients(gram, self.targets[idx][:, idx], self.config.gradvac_beta, self.generator)
        self.targets[idx.unsqueeze(1), idx] = new
        return M.sum(0)

    def state_dict(self) -> dict[str, Any]:
        return {"targets": self.targets.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # a checkpoint of another grad.method: start from the paper's zero targets
            return
        targets = state.get("targets")
        shape = (len(TASKS), len(TASKS))
        if not isinstance(targets, Tensor) or targets.shape != shape:
            shown = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(
                f"combiner state 'targets' is {shown}, but grad.method 'gradvac' needs a {shape} "
                f"tensor of target cosines (tasks {', '.join(TASKS)})"
            )
        self.targets = targets.double().clone()
