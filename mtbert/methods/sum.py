"""``sum``: the plain multi-task gradient, that of the sum of the task losses (the default)."""

from __future__ import annotations

from torch import Tensor

from mtbert.methods.base import COMBINERS, Combiner


@COMBINERS.register("sum")
class Sum(Combiner):
    """The plain multi-task gradient: that of the sum of the task losses."""

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int], diagnose: bool = False) -> dict[str, float]:
        return self.backward_sum(losses, diagnose)
