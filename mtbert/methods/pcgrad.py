"""``pcgrad`` and ``pcgrad_weighted``: gradient surgery on the shared encoder.

PCGrad: Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020 (Algorithm 1).
Sample-weighted PCGrad: Ang, *Multi-task BERT Fine-Tuning with Gradient Tricks* (paper 002).

``pcgrad_projections`` is the algorithm on a Gram matrix (what the combiners use: no copy of the
gradients), ``project_conflicting`` the same on explicit task gradients (T, P).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral

import torch
from torch import Tensor

from mtbert.config.sections import PerTask
from mtbert.methods.base import COMBINERS, Surgery, gram_matrix


def pcgrad_projections(gram: Tensor, generator: torch.Generator | None = None, weights: Tensor | None = None) -> Tensor:
    """(T, T) M with g_i^PC = sum_j M[i, j] g_j: the PCGrad-projected (weighted) task gradients.

    Algorithm 1 of Yu et al.: for each task i in turn, g_i^PC starts as w_i g_i and, for every other
    task j in a random order (``torch.randperm(T)`` per i, skipping i; index order without a
    generator), loses its component along the original w_j g_j when the two conflict (negative dot).
    g_i^PC stays a combination ``M[i] @ G`` of the original rows, so every dot product is
    ``M[i] @ gram[:, j]``; the projection along w_j g_j does not depend on w_j > 0.
    """
    T = gram.shape[0]
    A = gram.double()
    w = torch.ones(T, dtype=torch.float64) if weights is None else weights.double()
    M = torch.diag(w)
    for i in range(T):
        order = range(T) if generator is None else torch.randperm(T, generator=generator).tolist()
        for j in order:
            if j == i or w[j] <= 0 or A[j, j] <= 0:  # a zero gradient conflicts with nothing
                continue
            dot = M[i] @ A[:, j]
            if dot < 0:
                M[i, j] -= dot / A[j, j]
    return M


def project_conflicting(
    grads: Tensor, generator: torch.Generator | None = None, weights: Tensor | None = None
) -> Tensor:
    """PCGrad (Yu et al. 2020): the sum of the task gradients ``grads`` (T, P), each first scaled by
    ``weights`` (T,) and projected onto the normal plane of every other original (scaled) task
    gradient it conflicts with, in the order ``pcgrad_projections`` draws. Returns (P,)."""
    if grads.ndim != 2 or grads.shape[0] < 1:
        raise ValueError(f"grads has shape {tuple(grads.shape)}, but must be (T, P) with T >= 1 tasks")
    if weights is not None and (
        weights.shape != grads.shape[:1] or not bool((weights.isfinite() & (weights >= 0)).all())
    ):
        raise ValueError(f"weights is {weights.tolist()}, but must be {len(grads)} finite numbers >= 0, one per task")
    return pcgrad_projections(gram_matrix(grads), generator, weights).sum(0).to(grads.dtype) @ grads


def sample_weights(tasks: list[str], counts: Mapping[str, int], weights: PerTask) -> Tensor:
    """(T,) w_i ∝ grad.weights[i] / n_i, rescaled so the weights of the tasks present sum to T."""
    raw = []
    for t in tasks:
        n = counts.get(t)
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise ValueError(
                f"counts[{t!r}] is {n!r}, but pcgrad_weighted needs each task's example count, an int >= 1"
            )
        raw.append(getattr(weights, t) / int(n))
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"grad.weights of the tasks in this step ({', '.join(tasks)}) are all zero; give one > 0")
    return torch.tensor(raw, dtype=torch.float64) * (len(tasks) / total)


@COMBINERS.register("pcgrad")
class PCGrad(Surgery):
    """PCGrad (Yu et al. 2020) on the encoder; the order of the projections is drawn from the
    combiner's seeded generator, so a run (and a resumed run) is reproducible."""

    def mix(self, tasks: list[str], counts: Mapping[str, int], gram: Tensor) -> Tensor:
        return pcgrad_projections(gram, self.generator).sum(0)


@COMBINERS.register("pcgrad_weighted")
class PCGradWeighted(Surgery):
    """Sample-weighted PCGrad (paper 002): each task gradient is scaled by w_i = 1/n_i, n_i the task's
    examples in the step, times ``grad.weights``, before the PCGrad projections.

    Normalisation. The paper writes w_i = 1/n_i and does not say how its losses were reduced. Our
    task losses are already batch means, and w_i is applied to their gradients as written, so a task
    with more examples in the step counts for less, as the paper intends ("proportionally scaling
    down the gradients of tasks with more samples"). With equal counts the weights are equal, which
    is the paper's remark that 1:1:1 is plain PCGrad. The weights of the tasks present are rescaled
    to sum to T, as ``weighted`` does, so the update keeps plain PCGrad's scale and the learning rate
    its meaning (1/n_i alone would shrink it by the batch size). Were the paper's losses sums over
    the batch, 1/n_i would only turn them into the means we have: that reading is plain ``pcgrad``
    (with ``grad.weights`` all 1).
    """

    def mix(self, tasks: list[str], counts: Mapping[str, int], gram: Tensor) -> Tensor:
        w = sample_weights(tasks, counts, self.config.weights)
        return pcgrad_projections(gram, self.generator, w).sum(0)
