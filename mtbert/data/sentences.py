"""The tasks' training sentences as masked-LM text: distinct sentences, token ids with their
special-token masks, and padded batches (``mtbert.train.mlm`` masks and trains on them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mtbert.data.course import attention_mask, pad
from mtbert.data.prepare import TaskData

if TYPE_CHECKING:  # transformers is heavy: only its type is needed here
    from transformers import PreTrainedTokenizerBase


def task_sentences(data: TaskData) -> list[str]:
    """The distinct sentences of every task's training set (both sentences of a pair), first seen
    first: tasks in ``data.train`` order, examples in file order, a pair's first sentence first."""
    seen: dict[str, None] = {}  # an ordered set
    for ds in data.train.values():
        for i in ds.indices:  # a capped dataset keeps all its file's examples; indices select
            for sentence in ds.examples[i].sentences:
                seen.setdefault(sentence, None)
    return list(seen)


def tokenize(tokenizer: PreTrainedTokenizerBase, sentences: list[str], max_length: int) -> tuple[list, list]:
    """Token ids (int32) and special-token masks (bool) of each sentence, in one batched call."""
    enc = tokenizer(sentences, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                    return_attention_mask=False, return_token_type_ids=False)  # fmt: skip
    ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    special = [np.asarray(x, dtype=bool) for x in enc["special_tokens_mask"]]
    return ids, special


def collate(ids: list[np.ndarray], special: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, never-mask, attention_mask), each (B, T) padded to the longest row; padding is
    marked never-mask as well as special tokens."""
    return pad(ids, pad_id), pad(special, True, dtype=torch.bool), attention_mask(ids)
