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
dev loss curve. Dropout draws from torch's global generator, seeded from ``seed`` by the training
loop; everything else draws from an explicit ``torch.Generator``.

The steps go through the one training loop (``mtbert.train.loop.Trainer``): ``MlmObjective`` says
what a step's batch and loss are; masked-token accuracy on the held-out sentences, scored before
and after, is its evaluation. The sentences come from ``mtbert.data.sentences``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtbert.config.sections import MlmConfig, OptimConfig
from mtbert.data.course import BucketBatchSampler
from mtbert.data.sentences import collate, tokenize
from mtbert.model.bert import BertConfig, BertModel
from mtbert.train.loop import StepLosses, Trainer
from mtbert.train.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:  # transformers is heavy: only its type is needed here
    from transformers import PreTrainedTokenizerBase

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


@dataclass
class Rows:
    """Tokenised sentences and which of them train and which are held out for scoring."""

    ids: list[np.ndarray]
    special: list[np.ndarray]
    train_rows: list[int]  # in sentence order
    eval_rows: list[int]  # by length: little padding


class MlmObjective:
    """One masked-LM step over ``encoder`` with a fresh ``MlmHead``: a length-bucketed batch of the
    training rows (a new shuffle each pass), masked with ``generator``; the loss at the chosen
    positions. ``score()`` is the evaluation: loss and masked-token accuracy on the held-out rows,
    masked once with their own generator so that before and after see the same inputs."""

    def __init__(self, encoder: BertModel, tokenizer: PreTrainedTokenizerBase, config: MlmConfig, rows: Rows,
                 total: int, *, seed: int, generator: torch.Generator, device: torch.device, bf16: bool):
        self.encoder, self.tokenizer, self.config, self.rows = encoder, tokenizer, config, rows
        self.generator, self.device = generator, device
        self.bf16 = bf16 and device.type == "cuda"
        self.head = MlmHead(encoder, torch.Generator().manual_seed(seed)).to(device)
        eval_gen = torch.Generator().manual_seed(seed + 1)
        held = rows.eval_rows
        self.eval_batches = [self.masked_batch(held[i : i + EVAL_BATCH], eval_gen) for i in range(0, len(held), EVAL_BATCH)]
        optim = OptimConfig(lr=config.lr, warmup=config.warmup, **OPTIM)
        both = nn.ModuleList([encoder, self.head])  # its parameters() holds the tied embedding matrix once
        self.optimizer = build_optimizer(both, [], optim)
        self.scheduler = build_scheduler(self.optimizer, optim, total)
        self.clip_groups, self.clip_norm = [list(both.parameters())], optim.clip_norm
        sampler = BucketBatchSampler([len(rows.ids[r]) for r in rows.train_rows], config.batch_size, generator=generator)
        self.batches = itertools.chain.from_iterable(sampler for _ in itertools.count())

    def masked_batch(self, rows: Sequence[int], gen: torch.Generator) -> tuple[Masked, torch.Tensor]:
        ids, special = self.rows.ids, self.rows.special
        input_ids, never, attention = collate([ids[r] for r in rows], [special[r] for r in rows],
                                              self.tokenizer.pad_token_id)  # fmt: skip
        masked = mask_tokens(input_ids, never, mask_prob=self.config.mask_prob, mask_token_id=self.tokenizer.mask_token_id,
                             vocab_size=self.encoder.config.vocab_size, generator=gen)  # fmt: skip
        return Masked(masked.inputs.to(self.device), masked.labels.to(self.device)), attention.to(self.device)

    def loss_of(self, masked: Masked, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss over the chosen positions, and how many of them are predicted right."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.encoder(masked.inputs, attention).last_hidden_state  # (B, T, H)
            chosen = masked.labels != IGNORE  # (B, T)
            logits = self.head(hidden[chosen]).float()  # (M, V): only chosen positions, ~15% of tokens
        targets = masked.labels[chosen]  # (M,)
        return F.cross_entropy(logits, targets), (logits.argmax(dim=-1) == targets).sum()

    def backward(self, step: int) -> StepLosses:
        picked = next(self.batches)
        self.encoder.train()
        loss, _ = self.loss_of(*self.masked_batch([self.rows.train_rows[k] for k in picked], self.generator))
        loss.backward()
        return StepLosses({"mlm_loss": loss}, len(picked))

    def not_finite(self, values: dict[str, float], step: int) -> str:
        return f"the masked-LM loss is {values['mlm_loss']} at step {step}"

    @torch.inference_mode()
    def score(self) -> tuple[float | None, float | None]:
        """(loss, accuracy) on the held-out sentences; (None, None) when none are held out."""
        if not self.eval_batches:
            return None, None
        self.encoder.eval()
        loss = correct = count = 0.0
        for masked, attention in self.eval_batches:
            batch_loss, batch_correct = self.loss_of(masked, attention)
            n = int((masked.labels != IGNORE).sum())
            loss, correct, count = loss + batch_loss.item() * n, correct + batch_correct.item(), count + n
        return loss / count, correct / count


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
    rows = Rows(ids, special, train_rows=sorted(order[n_eval:]), eval_rows=sorted(order[:n_eval], key=lambda r: len(ids[r])))
    total = steps or math.ceil(config.epochs * len(rows.train_rows) / config.batch_size)

    flags, depth, was_training = [p.requires_grad for p in encoder.parameters()], encoder.frozen_depth, encoder.training
    encoder.to(device).freeze(0)
    try:
        objective = MlmObjective(encoder, tokenizer, config, rows, total, seed=seed, generator=g, device=device, bf16=bf16)
        loss_before, acc_before = objective.score()
        # no evaluation inside the loop: the held-out score is taken before and after it
        trainer = Trainer(objective, max_steps=total, eval_every=None, seed=seed)
        report = (lambda step: on_step(step, trainer.running["mlm_loss"][-1])) if on_step else None
        trainer.run(on_step=report)
        loss_after, acc_after = objective.score()
    finally:
        encoder.frozen_depth = depth
        for p, flag in zip(encoder.parameters(), flags):
            p.requires_grad_(flag)
        encoder.train(was_training)
    losses = trainer.running["mlm_loss"]  # every step's: the loop averages them only at an evaluation
    window = max(1, min(LOSS_WINDOW, len(losses) // 4))
    return MlmResult(
        steps=trainer.step, first_loss=float(np.mean(losses[:window])), last_loss=float(np.mean(losses[-window:])),
        samples_per_s=trainer.samples / max(trainer.train_seconds, 1e-9), sentences=len(rows.train_rows),
        held_out=n_eval, accuracy_before=acc_before, accuracy_after=acc_after, eval_loss_before=loss_before,
        eval_loss_after=loss_after,
    )  # fmt: skip
