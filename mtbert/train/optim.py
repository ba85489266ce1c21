"""Optimizer and learning-rate schedules.

AdamW (fused where the device supports it) over two parameter groups, encoder and heads, each with
its own learning rate; biases and LayerNorm weights are not decayed. Schedules are multipliers of
those base rates, per optimizer step:

- ``constant``: warm up linearly over ``warmup * max_steps`` steps, then hold;
- ``linear``: warm up, then decay linearly to 0 at ``max_steps``;
- ``slanted_triangular`` (Howard and Ruder 2018; paper 000): a short linear rise over the warm-up
  fraction to the peak, then a long linear fall to 1/32 of it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mtbert.config.sections import OptimConfig

STLR_RATIO = 32  # ULMFiT's ratio of the peak rate to the lowest


def build_optimizer(encoder: nn.Module, heads: list[nn.Parameter], config: OptimConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in encoder.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)  # biases and LayerNorm weights are 1-D
    groups = [
        {"params": decay, "lr": config.lr, "weight_decay": config.weight_decay, "name": "encoder"},
        {"params": no_decay, "lr": config.lr, "weight_decay": 0.0, "name": "encoder_no_decay"},
        {"params": [p for p in heads if p.requires_grad], "lr": config.head_lr,
         "weight_decay": config.weight_decay, "name": "heads"},
    ]
    groups = [g for g in groups if g["params"]]
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused)


def lr_multiplier(config: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """The factor applied to the base learning rates at optimizer step ``step`` (0-based)."""
    warm = int(config.warmup * max_steps)

    def constant(step: int) -> float:
        return (step + 1) / warm if step < warm else 1.0

    def linear(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (max_steps - step) / max(1, max_steps - warm))

    def slanted_triangular(step: int) -> float:
        cut = max(1, warm)
        p = step / cut if step < cut else 1 - (step - cut) / max(1, max_steps - cut)
        return (1 + max(0.0, p) * (STLR_RATIO - 1)) / STLR_RATIO

    return {"constant": constant, "linear": linear, "slanted_triangular": slanted_triangular}[config.schedule]


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config, max_steps))
