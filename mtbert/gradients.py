"""Gradient combiners: how the per-task losses of one step become one update.

The trainer computes one loss per task and hands them to the combiner named by ``grad.method``;
the combiner leaves the combined gradient in every parameter's ``.grad``. New methods (PCGrad and
others) register here under their own name and need no change to the trainer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtbert.config import GradConfig, OptimConfig
from mtbert.registry import Registry

COMBINERS: Registry[type["Combiner"]] = Registry("grad.method")


class Combiner:
    """Base: ``backward(losses, counts)`` fills ``.grad`` and returns diagnostics (may be empty).

    ``shared`` are the encoder parameters every task's loss reaches; head parameters are reached
    by their own task's loss only. ``counts`` holds each task's number of examples in the step.
    """

    def __init__(self, config: GradConfig, shared: list[nn.Parameter], generator: torch.Generator):
        self.config = config
        self.shared = shared
        self.generator = generator

    def backward(self, losses: dict[str, torch.Tensor], counts: dict[str, int],
                 diagnose: bool = False) -> dict[str, float]:
        """With ``diagnose``, the returned dict also holds the gradient-conflict figures of this
        step (``grad_cos_<a>_<b>`` per task pair, ``grad_conflict_frac``)."""
        raise NotImplementedError

    def param_groups(self, optim: OptimConfig) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the combiner's own learnable parameters (none by default)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the generator (running averages, learned weights)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@COMBINERS.register("sum")
class Sum(Combiner):
    """The plain multi-task gradient: that of the sum of the task losses."""

    def backward(self, losses: dict[str, torch.Tensor], counts: dict[str, int],
                 diagnose: bool = False) -> dict[str, float]:
        torch.stack(list(losses.values())).sum().backward()
        return {}


@COMBINERS.register("weighted")
class Weighted(Combiner):
    """The gradient of sum_t w_t * L_t with ``grad.weights``, rescaled so the weights of the tasks
    present in the step sum to their number (the learning rate keeps its meaning)."""

    def backward(self, losses: dict[str, torch.Tensor], counts: dict[str, int],
                 diagnose: bool = False) -> dict[str, float]:
        w = {t: getattr(self.config.weights, t) for t in losses}
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"grad.weights of the tasks in this step ({', '.join(losses)}) are all zero")
        scale = len(losses) / total
        torch.stack([loss * (w[t] * scale) for t, loss in losses.items()]).sum().backward()
        return {}
