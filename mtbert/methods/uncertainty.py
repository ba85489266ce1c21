"""Uncertainty weighting: Kendall, Gal and Cipolla, *Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics*, CVPR 2018.

Each task t has a learned log-variance s_t = log sigma_t^2 (starting at 0), and the step minimises

    sum_t exp(-s_t) L_t + s_t

over the tasks present. This is twice the paper's regression form (eq. 7: L / (2 sigma^2) +
log sigma), used for every task: its minimum over s_t is at s_t = log L_t (d/ds_t = 1 - exp(-s_t) L_t),
so each weight exp(-s_t) tends to 1 / L_t. We use it for the classification tasks too rather than
the paper's eq. 10 (L / sigma^2 + log sigma, minimum at s_t = log 2 L_t), which rests on a
softmax-with-temperature approximation our heads and losses do not make; and without the factor 1/2
the update at s = 0 equals ``sum``'s, so the learning rates keep their meaning.

The s_t are optimised with the model, in their own optimizer group (``param_groups``): learning
rate ``grad.uncertainty_lr``, or ``optim.head_lr`` when it is null, and no weight decay (which would
pull every sigma_t^2 towards 1). They are saved in checkpoints (``state_dict``), and their current
values are reported every step as ``log_var_<task>``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtbert.config.sections import GradConfig, OptimConfig
from mtbert.methods.base import COMBINERS, Combiner, task_order
from mtbert.tasks import TASKS


def uncertainty_loss(losses: dict[str, Tensor], log_vars: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each task's term exp(-s_t) L_t + s_t of the weighted objective."""
    return {t: torch.exp(-log_vars[t]) * loss + log_vars[t] for t, loss in losses.items()}


@COMBINERS.register("uncertainty")
class Uncertainty(Combiner):
    """The gradient of sum_t exp(-s_t) L_t + s_t, with the learned log-variances s_t."""

    def __init__(self, config: GradConfig, shared: list[nn.Parameter], generator: torch.Generator):
        super().__init__(config, shared, generator)
        device = shared[0].device if shared else torch.device("cpu")
        # One scalar parameter per task, so a task absent from a step gets no gradient (None) and
        # the optimizer leaves its s_t alone instead of moving it on stale momentum.
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros((), device=device)) for t in TASKS})

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int], diagnose: bool = False) -> dict[str, float]:
        tasks = task_order(losses)
        terms = uncertainty_loss({t: losses[t] for t in tasks}, dict(self.log_vars))
        # Diagnostics read the per-task gradients of the weighted terms: exp(-s_t) > 0 leaves cosines as they are.
        stats = self.backward_sum(terms, diagnose)
        return {**stats, **{f"log_var_{t}": self.log_vars[t].item() for t in tasks}}

    def param_groups(self, optim: OptimConfig) -> list[dict[str, Any]]:
        lr = optim.head_lr if self.config.uncertainty_lr is None else self.config.uncertainty_lr
        return [{"params": list(self.log_vars.values()), "lr": lr, "weight_decay": 0.0, "name": "uncertainty"}]

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": {t: p.detach().cpu().clone() for t, p in self.log_vars.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # a checkpoint of another grad.method: start from s = 0
            return
        saved = state.get("log_vars")
        if not isinstance(saved, dict) or sorted(saved) != sorted(TASKS):
            shown = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(
                f"combiner state 'log_vars' is {shown}, but grad.method 'uncertainty' needs one "
                f"scalar tensor per task: {', '.join(TASKS)}"
            )
        with torch.no_grad():  # in place: the optimizer holds these very parameters
            for t, p in self.log_vars.items():
                p.copy_(torch.as_tensor(saved[t]).reshape(()))
