"""One task's training examples as an endless, resumable stream of length-bucketed batches."""

from __future__ import annotations

from typing import Any

import torch

from mtbert.data.course import BucketBatchSampler, TaskDataset


class TaskStream:
    """Examples of one task in length-bucketed order, a fresh shuffle every pass; resumable from
    ``(epoch, position)`` because each pass's order is drawn from its own seeded generator."""

    def __init__(self, dataset: TaskDataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._order_of(0)

    def _order_of(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        sampler = BucketBatchSampler(self.dataset.lengths(), self.batch_size, generator=g)
        return [i for batch in sampler for i in batch]

    def take(self, n: int) -> dict[str, Any]:
        """The next ``n`` examples as one collated batch, going on into the next pass if needed."""
        picked: list[int] = []
        while len(picked) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._order_of(self.epoch)
            k = min(n - len(picked), len(self._order) - self.position)
            picked += self._order[self.position : self.position + k]
            self.position += k
        return self.dataset.collate([self.dataset[i] for i in picked])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._order_of(self.epoch)
