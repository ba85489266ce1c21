"""``MultiTaskModel``: one encoder, one head per task, built from ``HeadSpec``s.

The model runs the encoder as the task's head needs (its ``encoding``) and pools as its spec says;
everything task-specific is in the head. Siamese batches go through the encoder in one call, both
sentences stacked into (2B, T) rows with the shorter side padded on the right: the attention mask
hides the padding, so each row encodes as if alone, and one call on 2B rows is faster than two
calls on B rows (dropout masks differ from two separate calls, nothing else does).

``shared_pair_layer`` ties the first hidden layer of the para and sts heads into one module
(paper 003): both heads must have hidden layers and the same first hidden size.

The encoder may also be a ``TaskEncoders`` (``mtbert.model.merge``: one branch per task over a shared
frozen bottom, papers 002-004): each task then runs on its own branch (``encoder_for``), and
``encode_all`` runs the shared bottom once for all tasks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.config.fields import ConfigError
from mtbert.config.run import RunConfig
from mtbert.model.bert import BertModel, Dropout, EncoderOutput, mean_pool
from mtbert.model.heads import (
    FEATURES,
    Head,
    HeadOutput,
    HeadSpec,
    Pooled,
    Prediction,
    encoding_problem,
    head_class,
    new_linear,
)
from mtbert.model.merge import TaskEncoders, specialize
from mtbert.registry import Registry
from mtbert.tasks import PAIR_TASKS, TASKS

PoolFn = Callable[[EncoderOutput, "Tensor | None"], Tensor]
POOLING: Registry[PoolFn] = Registry("pooling")
POOLING.register("cls")(lambda out, mask: out.last_hidden_state[:, 0])  # (B, H)
POOLING.register("pooler")(lambda out, mask: out.pooler_output)  # (B, H): tanh(W h_cls + b)
POOLING.register("mean")(lambda out, mask: mean_pool(out.last_hidden_state, mask))  # (B, H)


def encode(encoder: BertModel, inputs: Mapping[str, Tensor], pool: PoolFn) -> Tensor:
    mask = inputs.get("attention_mask")
    return pool(encoder(inputs["input_ids"], mask, inputs.get("token_type_ids")), mask)  # (B, H)


def encode_pair(encoder: BertModel, a: Mapping[str, Tensor], b: Mapping[str, Tensor], pool: PoolFn) -> Pooled:
    """Both sentences in one encoder call: rows 0..B-1 are ``a``, rows B..2B-1 are ``b``."""
    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def padded(x: Mapping[str, Tensor], key: str, fill: int) -> Tensor:
        t = x.get(key)
        t = torch.full_like(x["input_ids"], fill) if t is None else t
        return F.pad(t, (0, T - t.shape[1]))  # (B, T); the padding is 0: masked out, token type 0

    stacked = {k: torch.cat([padded(a, k, fill), padded(b, k, fill)])  # (2B, T)
               for k, fill in (("input_ids", 0), ("attention_mask", 1), ("token_type_ids", 0))}
    u, v = encode(encoder, stacked, pool).chunk(2)  # (B, H) each
    return Pooled(u=u, v=v)


@dataclass(frozen=True)
class Encoding:
    keys: tuple[str, ...]  # batch keys it reads
    run: Callable[[BertModel, Mapping[str, Any], PoolFn], Pooled]


def _encode_one(encoder: BertModel, batch: Mapping[str, Any], pool: PoolFn) -> Pooled:
    return Pooled(x=encode(encoder, batch, pool))


ENCODINGS: Registry[Encoding] = Registry("pair_encoding")
ENCODINGS.register("single")(Encoding(("input_ids",), _encode_one))
ENCODINGS.register("concat")(Encoding(("input_ids",), _encode_one))  # [CLS] A [SEP] B [SEP]
ENCODINGS.register("siamese")(
    Encoding(("a", "b"), lambda encoder, batch, pool: encode_pair(encoder, batch["a"], batch["b"], pool))
)


class MultiTaskModel(nn.Module):
    """``heads`` maps task (sst, para, sts) -> ``HeadSpec``; head weights are drawn from ``seed``."""

    def __init__(
        self,
        encoder: BertModel | TaskEncoders,
        heads: Mapping[str, HeadSpec],
        *,
        shared_pair_layer: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if not heads:
            raise ValueError(f"heads is empty; give a HeadSpec for at least one task of: {', '.join(TASKS)}")
        if isinstance(encoder, TaskEncoders) and set(heads) - set(encoder.tasks):
            raise ValueError(
                f"heads has tasks {', '.join(heads)}, but the encoder has branches only for: "
                f"{', '.join(encoder.tasks)}; every head needs a branch"
            )
        self.encoder = encoder
        self.specs = dict(heads)
        generator = torch.Generator().manual_seed(seed)
        hidden_size = encoder.config.hidden_size
        classes = {task: head_class(task, spec.kind) for task, spec in self.specs.items()}
        for task, spec in self.specs.items():
            check_spec(task, classes[task], spec)
        shared = new_shared_layer(self.specs, hidden_size, generator) if shared_pair_layer else None
        self.heads = nn.ModuleDict({
            task: classes[task](hidden_size, spec, generator, shared if task in PAIR_TASKS else None)
            for task, spec in self.specs.items()
        })  # fmt: skip

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def head(self, task: str) -> Head:
        if task not in self.heads:
            raise ValueError(f"task is {task!r}, but this model has heads for: {', '.join(self.heads)}")
        return self.heads[task]

    def encoding(self, task: str) -> str:
        """How ``task``'s batches must be built: 'single', 'concat' or 'siamese'."""
        return self.head(task).encoding

    def forward(self, task: str, batch: Mapping[str, Any]) -> HeadOutput:
        head = self.head(task)
        enc = ENCODINGS.get(head.encoding)
        if not all(k in batch for k in enc.keys):
            raise ValueError(
                f"heads.{task}.kind {head.kind!r} reads pair encoding {head.encoding!r} batches with keys "
                f"{', '.join(enc.keys)}; got keys {', '.join(batch)}"
            )
        return head(enc.run(self.encoder_for(task), batch, POOLING.get(head.spec.pooling)))

    def encoder_for(self, task: str) -> BertModel:
        """The encoder ``task`` runs on: the one shared encoder, or the task's own branch."""
        self.head(task)
        return self.encoder.branch(task) if isinstance(self.encoder, TaskEncoders) else self.encoder

    def encode_all(self, batch: Mapping[str, Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Every task's pooled (B, H) vector of a batch of single sentences, pooled as its head says,
        with the encoder (or a ``TaskEncoders``' shared bottom) run once for all tasks (serving)."""
        tasks = self.tasks if tasks is None else list(tasks)
        for task in tasks:
            self.head(task)
        ids, mask, types = batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        if isinstance(self.encoder, TaskEncoders):
            outs = self.encoder.forward_all(ids, mask, types, tasks)
        else:
            outs = dict.fromkeys(tasks, self.encoder(ids, mask, types))
        return {t: POOLING.get(self.heads[t].spec.pooling)(outs[t], mask) for t in tasks}

    @torch.no_grad()
    def predict(self, task: str, batch: Mapping[str, Any]) -> Prediction:
        """Predictions in label space, without autograd; train/eval mode is the caller's."""
        return self.head(task).predict(self(task, batch))

    def encoder_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """The encoder's trainable parameters (frozen layers left out); with ``task``, only those
        that task's loss reaches (its branch, when the encoder is a ``TaskEncoders``)."""
        if task is None:
            return list(self.encoder.trainable_parameters())
        return [p for p in self.encoder_for(task).parameters() if p.requires_grad]

    def head_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """The heads' parameters (one task's, or all, a shared layer once)."""
        module = self.heads if task is None else self.head(task)
        return [p for p in module.parameters() if p.requires_grad]

    def shared_layer(self) -> nn.Linear | None:
        """The first layer the para and sts heads share, if they still do."""
        if not all(t in self.heads for t in PAIR_TASKS):
            return None
        first = [self.heads[t].first_layer for t in PAIR_TASKS]
        return first[0] if first[0] is not None and first[0] is first[1] else None

    def reset_head(self, task: str, *, seed: int = 0) -> None:
        """Re-draw ``task``'s head from its spec (two-step fine-tuning, paper 002). The new head
        owns all its layers: a shared first layer stays, untouched, with the other pair head.
        Its parameters are new objects, so build the optimizer after resetting."""
        old = self.head(task)
        generator = torch.Generator().manual_seed(seed)
        head = head_class(task, self.specs[task].kind)(self.encoder.config.hidden_size, self.specs[task], generator)
        self.heads[task] = head.to(next(old.parameters()).device)

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, shared_layer={self.shared_layer() is not None}"


def new_shared_layer(specs: Mapping[str, HeadSpec], hidden_size: int, generator: torch.Generator) -> nn.Linear:
    """One first layer for both pair heads (paper 003), checked to fit both."""
    missing = [t for t in PAIR_TASKS if t not in specs]
    if missing:
        raise ValueError(f"model.shared_pair_layer is true, but there is no head for: {', '.join(missing)}")
    sizes = {t: list(specs[t].hidden[:1]) for t in PAIR_TASKS}
    if not all(sizes.values()) or sizes["para"] != sizes["sts"]:
        raise ValueError(
            f"model.shared_pair_layer is true, but heads.para.hidden is {list(specs['para'].hidden)} and "
            f"heads.sts.hidden is {list(specs['sts'].hidden)}; both need hidden layers and the same first size"
        )
    return new_linear(hidden_size, sizes["para"][0], generator)


def check_spec(task: str, cls: type[Head], spec: HeadSpec) -> None:
    """Every setting of ``spec`` fits ``cls``; errors name the key, the value and what is allowed."""
    key = f"heads.{task}"
    problem = encoding_problem(task, cls, spec.pair_encoding)
    if problem:
        raise ValueError(problem)
    if spec.pooling not in POOLING:
        raise ValueError(f"{key}.pooling: {POOLING.unknown_message(spec.pooling)}")
    if not all(isinstance(h, int) and h > 0 for h in spec.hidden):
        raise ValueError(f"{key}.hidden is {list(spec.hidden)}, but must be a list of positive integers")
    if spec.hidden and not cls.takes_hidden:
        raise ValueError(f"{key}.hidden is {list(spec.hidden)}, but {key}.kind {spec.kind!r} has no hidden layers; "
                         "kind 'mlp' has them")
    if not 0.0 <= spec.dropout < 1.0:
        raise ValueError(f"{key}.dropout is {spec.dropout}, but must be in [0, 1)")
    if not isinstance(spec.bins, int) or spec.bins < 2:
        raise ValueError(f"{key}.bins is {spec.bins!r}, but must be an integer >= 2")
    if not spec.features or len(set(spec.features)) < len(spec.features) or set(spec.features) - set(FEATURES):
        raise ValueError(f"{key}.features is {list(spec.features)}, but must be distinct names from: "
                         f"{', '.join(FEATURES)}")


def head_specs(config: RunConfig) -> dict[str, HeadSpec]:
    """The run config's ``heads.<task>`` sections as ``HeadSpec``s. ``hidden`` goes only to heads
    that have hidden layers, so a search may switch ``kind`` between linear and mlp freely."""
    specs = {}
    for task in TASKS:
        h = getattr(config.heads, task)
        cls = head_class(task, h.kind)
        specs[task] = HeadSpec(
            kind=h.kind, hidden=tuple(h.hidden) if cls.takes_hidden else (), dropout=h.dropout,
            pooling=h.pooling, pair_encoding=h.pair_encoding, features=tuple(h.features), bins=h.bins,
        )  # fmt: skip
    return specs


def check_heads(config: RunConfig) -> None:
    """The heads ``config`` asks for fit their settings, and a shared pair layer fits both pair heads;
    raises ``ConfigError`` naming the key (the heads' own checks, run by ``mtbert.validation``)."""
    specs = head_specs(config)
    for task, spec in specs.items():
        try:
            check_spec(task, head_class(task, spec.kind), spec)
        except ValueError as e:
            raise ConfigError(f"heads.{task}", str(e)) from None
    if config.model.shared_pair_layer:
        try:
            new_shared_layer(specs, 8, torch.Generator())
        except ValueError as e:
            raise ConfigError("model.shared_pair_layer", str(e)) from None


def build_model(config: RunConfig, encoder: BertModel | TaskEncoders) -> MultiTaskModel:
    """The multi-task model a run config describes, with the encoder's bottom frozen as it says.
    A ``TaskEncoders`` keeps its own freezing: its shared bottom, ``shared_depth`` layers."""
    if isinstance(encoder, BertModel):
        encoder.freeze(config.model.freeze_depth)
    return MultiTaskModel(
        encoder, head_specs(config), shared_pair_layer=config.model.shared_pair_layer, seed=config.train.seed
    )


def set_dropout(model: MultiTaskModel, config: RunConfig) -> None:
    """Give every head of ``model`` the dropout rate ``config`` sets for it (``heads.<task>.dropout``):
    each of the head's dropout layers takes the rate, and the head's spec records it, so a head
    re-drawn later from its spec (``reset_head``) has it too. A resumed run's model is rebuilt from
    its checkpoint's config; this is how a new rate reaches it (a setting that may change at resume).
    The head's layers, hence its parameters and outputs in eval mode, are untouched."""
    for task, head in model.heads.items():
        rate = getattr(config.heads, task).dropout
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"heads.{task}.dropout is {rate}, but must be in [0, 1)")
        for module in head.modules():
            if isinstance(module, Dropout):
                module.p = rate
        head.spec = model.specs[task] = replace(head.spec, dropout=rate)


def to_specialists(
    model: MultiTaskModel, shared_depth: int, *, reset_heads: bool = True, seed: int = 0
) -> MultiTaskModel:
    """The phase-2 model of two-step fine-tuning (paper 002): a new ``MultiTaskModel`` whose encoder
    is ``specialize(model.encoder, ...)`` and whose heads are copies, re-drawn from ``seed + i``
    (the i-th task) when ``reset_heads``. ``model`` is left untouched. Build the optimizer after."""
    if not isinstance(model.encoder, BertModel):
        raise TypeError(
            f"model.encoder is a {type(model.encoder).__name__}, but to_specialists starts from "
            "a multi-task model with one BertModel encoder"
        )
    encoders = specialize(model.encoder, model.tasks, shared_depth)
    # Copy everything but the encoder (the memo maps it to itself), then swap in the task encoders.
    new = copy.deepcopy(model, {id(model.encoder): model.encoder})
    new.encoder = encoders
    if reset_heads:
        for i, task in enumerate(new.tasks):
            new.reset_head(task, seed=seed + i)
    return new
