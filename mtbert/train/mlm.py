"""Further masked-LM pre-training of the encoder on the tasks' own training sentences.

Paper 000 (sections 2.3, 3.5, 4.4.6) further pre-trains BERT "within task" (Sun et al. 2019)
before multi-task fine-tuning: the sentences of the SST, Quora and STS training sets, each pair
split into its two sentences, with the masked-LM objective and masking of Devlin et al. (2019):
15% of the tokens are chosen, of those 80% become [MASK], 10% a random token and 10% stay as they
are, and the model predicts the original token at every chosen position. There (Table 3), 3 epochs
raised the dev overall score from 0.773 to 0.781; 18 and 40 epochs lowered it to 0.763 and 0.765.

The MLM head is BERT's (``cls.predictions`` in Hugging Face checkpoints): dense + GELU + LayerNorm,
then a decoder whose weight is the encoder's word-embedding matrix, plus a bias per token. It is
built fresh for each call and thrown away at the end: only the encoder goes on to fine-tuning.
Checkpoint ``cls.`` keys are never loaded (all-MiniLM-L6-v2 has none): the transform starts random.

Differences from paper 000: the learning rate warms up and then decays linearly (the paper used
slanted triangular rates), and masked-token accuracy on a few held-out sentences stands in for its
dev loss curve. Dropout draws from torch's global generator, seeded from ``seed`` on entry, as in
the trainer; everything else draws from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtbert.model.bert import BertConfig, BertModel
from mtbert.config import MlmConfig, OptimConfig
from mtbert.data.course import BucketBatchSampler
from mtbert.train.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:  # transformers is heavy; the trainer pulls in the whole model
    from transformers import PreTrainedTokenizerBase

    from mtbert.train.loop import TaskData

IGNORE = -100  # label of positions that are not predicted (F.cross_entropy's ignore_index)
# Devlin et al. 2019's weight decay; the rate decays linearly after warm-up; gradients clipped at 1
OPTIM = {"weight_decay": 0.01, "schedule": "linear", "clip_norm": 1.0}
HELD_OUT = 128  # sentences kept out of training to score masked-token accuracy (at most a tenth)
EVAL_BATCH = 64
LOSS_WINDOW = 10  # steps averaged into MlmResult.first_loss and .last_loss


class PredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        # skip_init: no draw from the global generator; the caller's generator initialises it
        self.dense = nn.utils.skip_init(nn.Linear, config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPredictionHead(nn.Module):
    def __init__(self, encoder: BertModel):
        super().__init__()
        config = encoder.config
        self.transform = PredictionHeadTransform(config)
        self.decoder = nn.utils.skip_init(nn.Linear, config.hidden_size, config.vocab_size, bias=False)
        # Tied (Devlin et al. 2019, as in every BERT checkpoint): the very same Parameter, so a step
        # on the output side also moves the input embeddings the fine-tuned encoder keeps.
        self.decoder.weight = encoder.embeddings.word_embeddings.weight  # (V, H)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias  # (M, H) -> (M, V)


class MlmHead(nn.Module):
    """BERT's MLM head over ``encoder``; keys as in HF's ``BertOnlyMLMHead`` (``predictions.*``)."""

    def __init__(self, encoder: BertModel, generator: torch.Generator | None = None):
        super().__init__()
        self.predictions = LMPredictionHead(encoder)
        dense = self.predictions.transform.dense
        with torch.no_grad():  # BERT's initialisation, as BertModel.reset_parameters
            nn.init.normal_(dense.weight, 0.0, encoder.config.initializer_range, generator=generator)
            nn.init.zeros_(dense.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)  # (M, H) -> (M, V) logits


class Masked(NamedTuple):
    inputs: torch.Tensor  # (B, T) ids, chosen positions masked, replaced or kept
    labels: torch.Tensor  # (B, T) original ids at chosen positions, IGNORE elsewhere


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    *,
    mask_prob: float,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> Masked:
    """Devlin et al.'s masking of (B, T) ids. ``special_tokens_mask`` is true where a token must
    never be chosen: [CLS], [SEP] and padding. Each maskable token is chosen with ``mask_prob``;
    a chosen token becomes [MASK] (80%), a random id of the vocabulary (10%) or stays (10%).

    A row with maskable tokens but none chosen gets one chosen uniformly among them: it would add
    nothing to the loss, and a batch of short sentences could have no chosen token (a NaN loss).
    This raises the rate of rows under ~20 tokens above ``mask_prob`` (0.85**10: 20% of 10-token
    rows would otherwise be empty). The same number of draws is made whatever the data, so equal
    generator states give equal masks."""
    if not 0.0 <= mask_prob < 1.0:
        raise ValueError(f"mask_prob is {mask_prob}, but must be in [0, 1)")
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(f"special_tokens_mask has shape {list(special_tokens_mask.shape)}, "
                         f"but must match input_ids {list(input_ids.shape)}")  # fmt: skip
    shape, device = input_ids.shape, input_ids.device
    maskable = ~special_tokens_mask.bool()  # (B, T)
    chosen = (torch.rand(shape, generator=generator, device=device) < mask_prob) & maskable
    empty = maskable.any(dim=1) & ~chosen.any(dim=1)  # (B,)
    pick = torch.rand(shape, generator=generator, device=device).masked_fill(~maskable, -1.0).argmax(dim=1)  # (B,)
    chosen[empty, pick[empty]] = True
    u = torch.rand(shape, generator=generator, device=device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=device, dtype=input_ids.dtype)
    inputs = torch.where(chosen & (u < 0.8), mask_token_id, input_ids)
    inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), random_ids, inputs)
    return Masked(inputs, torch.where(chosen, input_ids, IGNORE))


def task_sentences(data: TaskData) -> list[str]:
    """The distinct sentences of every task's training set (both sentences of a pair), first seen
    first: tasks in ``data.train`` order, examples in file order, a pair's first sentence first."""
    seen: dict[str, None] = {}  # an ordered set
    for ds in data.train.values():
        for i in ds.indices:  # a capped dataset keeps all its file's examples; indices select
            for sentence in ds.examples[i].sentences:
                seen.setdefault(sentence, None)
    return list(seen)


@dataclass
class MlmResult:
    steps: int  # optimizer steps taken
    first_loss: float  # mean training loss of the first LOSS_WINDOW steps (fewer on short runs)
    last_loss: float  # ... and of the last ones
    samples_per_s: float  # training sentences per second, tokenising and scoring left out
    sentences: int  # sentences trained on
    held_out: int  # sentences scored before and after
    accuracy_before: float | None  # masked-token accuracy on the held-out sentences; None if none
    accuracy_after: float | None
    eval_loss_before: float | None  # masked-LM loss on the held-out sentences
    eval_loss_after: float | None


def further_pretrain(
    encoder: BertModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    config: MlmConfig,
    *,
    max_length: int = 128,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, float], None] | None = None,
    held_out: int = HELD_OUT,
    bf16: bool = False,
) -> MlmResult:
    """Train ``encoder`` in place (and leave it on ``device``) with a fresh MLM head on ``sentences``.

    At most ``config.max_sentences`` sentences are used (a seeded random subset); of those,
    ``min(held_out, n // 10)`` are set aside and scored before and after. Training runs
    ``steps`` optimizer steps if given, else ``ceil(config.epochs * n_train / config.batch_size)``.
    Every layer trains, frozen or not (further pre-training adapts the whole encoder); the
    ``requires_grad`` flags and ``frozen_depth`` are put back afterwards, as is train/eval mode.
    ``on_step(step, loss)`` is called after each step (1-based). ``bf16`` autocasts on CUDA only.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps is {steps!r}, but must be a positive integer, or None to let mlm.epochs decide")
    if not isinstance(held_out, int) or held_out < 0:
        raise ValueError(f"held_out is {held_out!r}, but must be an integer >= 0 (0 scores nothing)")
    if max_length < 3:
        raise ValueError(f"max_length is {max_length}, but must be >= 3 ([CLS], a token, [SEP])")
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no mask token; masked-LM training needs one")
    sentences = list(sentences)
    if not sentences:
        raise ValueError("sentences is empty, but further pre-training needs at least one (see task_sentences)")
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    if config.max_sentences is not None and config.max_sentences < len(sentences):
        keep = torch.randperm(len(sentences), generator=g)[: config.max_sentences].sort().values
        sentences = [sentences[i] for i in keep.tolist()]
    ids, special = tokenize(tokenizer, sentences, max_length)
    usable = [i for i, s in enumerate(special) if not s.all()]  # text the tokenizer drops entirely
    if not usable:
        raise ValueError(f"sentences hold no token to mask ({len(sentences)} given, e.g. {sentences[0]!r})")
    order = [usable[k] for k in torch.randperm(len(usable), generator=g).tolist()]
    n_eval = min(held_out, len(usable) // 10)
    eval_rows = sorted(order[:n_eval], key=lambda r: len(ids[r]))  # by length: little padding
    train_rows = sorted(order[n_eval:])
    total = steps or math.ceil(config.epochs * len(train_rows) / config.batch_size)

    def masked_batch(rows: Sequence[int], gen: torch.Generator) -> tuple[Masked, torch.Tensor]:
        rows_ids, rows_special = [ids[r] for r in rows], [special[r] for r in rows]
        input_ids, never, attention = collate(rows_ids, rows_special, tokenizer.pad_token_id)
        masked = mask_tokens(input_ids, never, mask_prob=config.mask_prob, mask_token_id=tokenizer.mask_token_id,
                             vocab_size=encoder.config.vocab_size, generator=gen)  # fmt: skip
        return Masked(masked.inputs.to(device), masked.labels.to(device)), attention.to(device)

    def loss_of(masked: Masked, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            hidden = encoder(masked.inputs, attention).last_hidden_state  # (B, T, H)
            chosen = masked.labels != IGNORE  # (B, T)
            logits = head(hidden[chosen]).float()  # (M, V): only chosen positions, ~15% of tokens
        targets = masked.labels[chosen]  # (M,)
        return F.cross_entropy(logits, targets), (logits.argmax(dim=-1) == targets).sum()

    @torch.inference_mode()
    def score() -> tuple[float | None, float | None]:  # (loss, accuracy) on the held-out sentences
        if not eval_batches:
            return None, None
        encoder.eval()
        loss = correct = count = 0.0
        for masked, attention in eval_batches:
            batch_loss, batch_correct = loss_of(masked, attention)
            n = int((masked.labels != IGNORE).sum())
            loss, correct, count = loss + batch_loss.item() * n, correct + batch_correct.item(), count + n
        return loss / count, correct / count

    flags, depth, was_training = [p.requires_grad for p in encoder.parameters()], encoder.frozen_depth, encoder.training
    encoder.to(device).freeze(0)
    try:
        head = MlmHead(encoder, torch.Generator().manual_seed(seed)).to(device)
        # Fixed masks (their own generator), so before and after are scored on the same inputs.
        eval_gen = torch.Generator().manual_seed(seed + 1)
        eval_batches = [masked_batch(eval_rows[i : i + EVAL_BATCH], eval_gen) for i in range(0, n_eval, EVAL_BATCH)]
        loss_before, acc_before = score()
        optim = OptimConfig(lr=config.lr, warmup=config.warmup, **OPTIM)
        both = nn.ModuleList([encoder, head])  # its parameters() holds the tied embedding matrix once
        optimizer = build_optimizer(both, [], optim)
        scheduler = build_scheduler(optimizer, optim, total)
        sampler = BucketBatchSampler([len(ids[r]) for r in train_rows], config.batch_size, generator=g)
        batches = itertools.chain.from_iterable(sampler for _ in itertools.count())  # a new shuffle each pass
        torch.manual_seed(seed)  # dropout's generator; see the module docstring
        encoder.train()
        losses: list[float] = []
        seconds, samples = 0.0, 0
        for step, picked in zip(range(1, total + 1), batches):
            start = time.perf_counter()
            loss, _ = loss_of(*masked_batch([train_rows[k] for k in picked], g))
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in both.parameters() if p.grad is not None], optim.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            seconds, samples = seconds + time.perf_counter() - start, samples + len(picked)
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"the masked-LM loss is {losses[-1]} at step {step}")
            if on_step:
                on_step(step, losses[-1])
        loss_after, acc_after = score()
    finally:
        encoder.frozen_depth = depth
        for p, flag in zip(encoder.parameters(), flags):
            p.requires_grad_(flag)
        encoder.train(was_training)
    window = max(1, min(LOSS_WINDOW, len(losses) // 4))
    return MlmResult(
        steps=len(losses), first_loss=float(np.mean(losses[:window])), last_loss=float(np.mean(losses[-window:])),
        samples_per_s=samples / max(seconds, 1e-9), sentences=len(train_rows), held_out=n_eval,
        accuracy_before=acc_before, accuracy_after=acc_after, eval_loss_before=loss_before, eval_loss_after=loss_after,
    )  # fmt: skip


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
    B, T = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    never = torch.ones((B, T), dtype=torch.bool)
    attention = torch.zeros((B, T), dtype=torch.long)
    for i, (x, s) in enumerate(zip(ids, special)):
        input_ids[i, : len(x)] = torch.from_numpy(x.astype(np.int64))
        never[i, : len(x)] = torch.from_numpy(s)
        attention[i, : len(x)] = 1
    return input_ids, never, attention
