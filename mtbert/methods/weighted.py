"""``weighted``: the gradient of a fixed weighted sum of the task losses (``grad.weights``)."""

from __future__ import annotations

from torch import Tensor

from mtbert.methods.base import COMBINERS, Combiner


@COMBINERS.register("weighted")
class Weighted(Combiner):
    """The gradient of sum_t w_t * L_t with ``grad.weights``, rescaled so the weights of the tasks
    present in the step sum to their number (the learning rate keeps its meaning)."""

    def backward(self, losses: dict[str, Tensor], counts: dict[str, int], diagnose: bool = False) -> dict[str, float]:
        w = {t: getattr(self.config.weights, t) for t in losses}
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"grad.weights of the tasks in this step ({', '.join(losses)}) are all zero")
        scale = len(losses) / total
        return self.backward_sum({t: loss * (w[t] * scale) for t, loss in losses.items()}, diagnose)
