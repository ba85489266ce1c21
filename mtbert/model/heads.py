"""Task heads: what sits on the encoder for each task, chosen per task by kind (``HEADS[task]``).

- ``sst`` (5 classes): ``linear`` (dropout, one linear layer; paper 001) and ``mlp`` (ReLU MLP;
  papers 000, 002) on the pooled sentence -> 5 logits.
- ``para`` (binary): ``concat`` (MLP on the pooled ``[CLS] A [SEP] B [SEP]`` pair; paper 000) ->
  one logit; ``siamese`` (each sentence encoded alone, projected, then an MLP on the chosen
  interaction features of u and v, by default Sentence-BERT's [u, v, |u-v|, u*v]; papers 001-003)
  -> one logit; ``cosine`` (cos(u, v) times a learnable scale plus a bias) -> one logit.
- ``sts`` (0-5): ``regression`` (MLP on the concat pair -> 5 * sigmoid), ``siamese`` (as for para
  -> 5 * sigmoid), ``cosine`` (cos(u, v) mapped from [-1, 1] onto [0, 5]; paper 001) and ``bins``
  (classes over K evenly spaced scores, paper 004: the score is the expected value under the
  softmax, the loss reads the logits).

``HeadSpec.hidden`` lists hidden sizes. The first linear layer of every head reads the pooled
H-vector (of the pair, or of each sentence), so it is the layer that ``MultiTaskModel``'s
``share_pair_layer`` can tie between the para and sts heads (paper 003).

A head reads pooled encoder vectors (``Pooled``); ``MultiTaskModel`` runs the encoder as the
head's ``encoding`` says and pools as its ``spec.pooling`` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.model.bert import Dropout
from mtbert.registry import Registry
from mtbert.tasks import TASKS

FEATURES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "u": lambda u, v: u,
    "v": lambda u, v: v,
    "diff": lambda u, v: (u - v).abs(),
    "prod": lambda u, v: u * v,  # paper 003's element-wise product interaction
}


@dataclass
class HeadOutput:
    logits: Tensor | None = None  # (B, C) class logits (sst, sts bins) or (B,) one binary logit (para)
    score: Tensor | None = None  # (B,) similarity in [0, label_max] (sts)
    u: Tensor | None = None  # (B, D) first sentence's vector, as the head compares it (siamese heads)
    v: Tensor | None = None  # (B, D) second sentence's vector
    bin_centres: Tensor | None = None  # (C,) the score each class of ``logits`` stands for (sts bins)


@dataclass
class Pooled:
    """What a head reads: the pooled sentence or concat pair (``x``), or each sentence alone."""

    x: Tensor | None = None  # (B, H) encodings 'single' and 'concat'
    u: Tensor | None = None  # (B, H) encoding 'siamese': first sentence
    v: Tensor | None = None  # (B, H) second sentence


@dataclass
class Prediction:
    label: Tensor  # (B,) in label space: sst class index, para 0/1 (long); sts score in [0, 5] (float)
    probs: Tensor | None = None  # sst (B, 5) class probabilities; para (B,) P(paraphrase); sts None


@dataclass(frozen=True)
class HeadSpec:
    """One task's head. ``features`` is read by ``siamese`` heads only, ``bins`` by ``bins`` only.
    ``pair_encoding`` (the data's), when given, is checked against the encoding the head reads."""

    kind: str
    hidden: tuple[int, ...] = ()
    dropout: float = 0.3  # papers 000, 001 and 003 all settled on 0.3 (001 tried 0.5 against overfitting)
    pooling: str = "cls"
    pair_encoding: str | None = None
    features: tuple[str, ...] = ("u", "v", "diff", "prod")
    bins: int = 6

    def __post_init__(self) -> None:  # YAML gives lists; keep the spec hashable
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "features", tuple(self.features))


# ---- layers -------------------------------------------------------------------------------------
def new_linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default U(+-1/sqrt(n_in)) init drawn from ``generator``
    (``skip_init`` leaves the global RNG alone)."""
    layer = nn.utils.skip_init(nn.Linear, n_in, n_out)
    bound = n_in**-0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class MLP(nn.Module):
    """``sizes = [in, h1, ..., out]``: dropout -> linear, then (ReLU -> dropout -> linear) per
    further size; dropout before each linear layer as in papers 001 and 003. ``[in]`` alone is
    dropout only. ``first``, if given, is used as the first linear layer (a shared one)."""

    def __init__(self, sizes: Sequence[int], dropout: float, generator: torch.Generator,
                 first: nn.Linear | None = None):
        super().__init__()
        self.dropout = Dropout(dropout)
        layers = [new_linear(n_in, n_out, generator) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        if first is not None:
            if not layers or (first.in_features, first.out_features) != (sizes[0], sizes[1]):
                raise ValueError(f"a shared first layer {first.in_features}->{first.out_features} does not fit "
                                 f"an MLP of sizes {list(sizes)}")
            layers[0] = first
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(self.dropout(F.relu(x) if i else x))
        return self.dropout(x) if not self.layers else x


# ---- bases --------------------------------------------------------------------------------------
class Head(nn.Module):
    """A task head: ``forward(pooled) -> HeadOutput``. ``encoding`` names the batches it reads
    (single, concat or siamese); ``provides`` names what its output carries (losses check it)."""

    task: ClassVar[str]
    kind: ClassVar[str]  # the name it is registered under
    encoding: ClassVar[str]
    provides: ClassVar[frozenset[str]]  # subset of: class_logits, logit, score, embeddings
    label_max: ClassVar[float]  # labels lie in [0, label_max]
    takes_hidden: ClassVar[bool] = True

    def __init__(self, hidden_size: int, spec: HeadSpec, generator: torch.Generator, first: nn.Linear | None = None):
        """Layers are drawn from ``generator``; ``first`` replaces the first hidden layer (shared)."""
        super().__init__()
        self.spec = spec

    def predict(self, out: HeadOutput) -> Prediction:
        raise NotImplementedError

    def read_scalar(self, x: Tensor) -> HeadOutput:
        """A (B,) network output as this task's result: a logit (para) or a score (sts)."""
        raise NotImplementedError

    @property
    def first_layer(self) -> nn.Linear | None:
        """The hidden layer reading the pooled H-vector, if the head has hidden layers."""
        raise NotImplementedError


class PooledHead(Head):
    """An MLP on one pooled vector: the sentence (sst) or the concat-encoded pair."""

    encoding = "concat"
    out_features: ClassVar[int] = 1

    def __init__(self, hidden_size: int, spec: HeadSpec, generator: torch.Generator, first: nn.Linear | None = None):
        super().__init__(hidden_size, spec, generator, first)
        self.mlp = MLP([hidden_size, *spec.hidden, self.outputs(spec)], spec.dropout, generator, first)

    @classmethod
    def outputs(cls, spec: HeadSpec) -> int:
        return cls.out_features

    @property
    def first_layer(self) -> nn.Linear | None:
        return self.mlp.layers[0] if self.spec.hidden else None

    def forward(self, pooled: Pooled) -> HeadOutput:
        return self.finish(self.mlp(pooled.x))  # (B, out_features)

    def finish(self, x: Tensor) -> HeadOutput:
        return self.read_scalar(x.squeeze(-1))  # (B,)


class SiameseHead(Head):
    """Each sentence pooled alone, then ``project`` (an MLP on H) and ``compare(u, v)``."""

    encoding = "siamese"
    project: MLP  # set by subclasses

    @property
    def first_layer(self) -> nn.Linear | None:
        return self.project.layers[0] if self.spec.hidden else None

    def forward(self, pooled: Pooled) -> HeadOutput:
        return self.compare(self.project(pooled.u), self.project(pooled.v))  # (B, D) each

    def compare(self, u: Tensor, v: Tensor) -> HeadOutput:
        raise NotImplementedError


class InteractionHead(SiameseHead):
    """Sentence-BERT's classifier: project to ``hidden[0]`` (linear), then an MLP over the
    ``features`` of u and v through ``hidden[1:]`` to one output."""

    def __init__(self, hidden_size: int, spec: HeadSpec, generator: torch.Generator, first: nn.Linear | None = None):
        super().__init__(hidden_size, spec, generator, first)
        self.project = MLP([hidden_size, *spec.hidden[:1]], spec.dropout, generator, first)
        d = spec.hidden[0] if spec.hidden else hidden_size
        self.mlp = MLP([len(spec.features) * d, *spec.hidden[1:], 1], spec.dropout, generator)

    def compare(self, u: Tensor, v: Tensor) -> HeadOutput:
        x = torch.cat([FEATURES[f](u, v) for f in self.spec.features], dim=-1)  # (B, k D)
        out = self.read_scalar(self.mlp(x).squeeze(-1))  # (B,)
        out.u, out.v = u, v
        return out


class CosineHead(SiameseHead):
    """cos(u, v) of the projected sentences; the projection is an MLP through ``hidden`` with a
    linear last layer (a ReLU there would leave only non-negative cosines)."""

    def __init__(self, hidden_size: int, spec: HeadSpec, generator: torch.Generator, first: nn.Linear | None = None):
        super().__init__(hidden_size, spec, generator, first)
        self.project = MLP([hidden_size, *spec.hidden], spec.dropout, generator, first)

    def compare(self, u: Tensor, v: Tensor) -> HeadOutput:
        return self.finish(F.cosine_similarity(u, v, dim=-1), u, v)  # (B,) in [-1, 1]

    def finish(self, cos: Tensor, u: Tensor, v: Tensor) -> HeadOutput:
        raise NotImplementedError


# ---- the three tasks ----------------------------------------------------------------------------
class SstTask:
    task = "sst"
    encoding = "single"
    label_max = 4.0

    def predict(self, out: HeadOutput) -> Prediction:
        probs = out.logits.softmax(dim=-1)  # (B, 5)
        return Prediction(label=probs.argmax(dim=-1), probs=probs)


class ParaTask:
    task = "para"
    label_max = 1.0

    def read_scalar(self, x: Tensor) -> HeadOutput:
        return HeadOutput(logits=x)

    def predict(self, out: HeadOutput) -> Prediction:
        p = torch.sigmoid(out.logits)  # (B,)
        return Prediction(label=(p > 0.5).long(), probs=p)


class StsTask:
    task = "sts"
    label_max = 5.0

    def read_scalar(self, x: Tensor) -> HeadOutput:
        return HeadOutput(score=self.label_max * torch.sigmoid(x))  # (B,) in [0, 5]

    def predict(self, out: HeadOutput) -> Prediction:
        return Prediction(label=out.score)


HEADS: dict[str, Registry[type[Head]]] = {task: Registry(f"heads.{task}.kind") for task in TASKS}


def _head(task: str, kind: str) -> Callable[[type[Head]], type[Head]]:
    def add(cls: type[Head]) -> type[Head]:
        cls.kind = kind
        return HEADS[task].register(kind)(cls)

    return add


@_head("sst", "mlp")
class SstMLP(SstTask, PooledHead):
    provides = frozenset({"class_logits"})
    out_features = 5

    def finish(self, x: Tensor) -> HeadOutput:
        return HeadOutput(logits=x)  # (B, 5)


@_head("sst", "linear")
class SstLinear(SstMLP):
    takes_hidden = False


@_head("para", "concat")
class ParaConcat(ParaTask, PooledHead):
    provides = frozenset({"logit"})


@_head("para", "siamese")
class ParaSiamese(ParaTask, InteractionHead):
    provides = frozenset({"logit", "embeddings"})


@_head("para", "cosine")
class ParaCosine(ParaTask, CosineHead):
    provides = frozenset({"logit", "embeddings"})

    def __init__(self, hidden_size: int, spec: HeadSpec, generator: torch.Generator, first: nn.Linear | None = None):
        super().__init__(hidden_size, spec, generator, first)
        # logit = scale * (cos - 0.5): at the start, pairs above cosine 0.5 read as paraphrases.
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-5.0))

    def finish(self, cos: Tensor, u: Tensor, v: Tensor) -> HeadOutput:
        return HeadOutput(logits=self.scale * cos + self.bias, u=u, v=v)


@_head("sts", "regression")
class StsRegression(StsTask, PooledHead):
    provides = frozenset({"score"})


@_head("sts", "siamese")
class StsSiamese(StsTask, InteractionHead):
    provides = frozenset({"score", "embeddings"})


@_head("sts", "cosine")
class StsCosine(StsTask, CosineHead):
    provides = frozenset({"score", "embeddings"})

    def finish(self, cos: Tensor, u: Tensor, v: Tensor) -> HeadOutput:
        # The whole cosine range maps onto the labels, cos -1 -> 0 and 1 -> 5 (paper 001 scales the
        # cosine to 0-5; paper 004 blames its weak cosine result partly on labels mapped onto [0, 1]).
        return HeadOutput(score=self.label_max * (cos + 1) / 2, u=u, v=v)


@_head("sts", "bins")
class StsBins(StsTask, PooledHead):
    """Paper 004: STS as classification. Class k stands for the score ``k * 5 / (K - 1)``."""

    provides = frozenset({"class_logits", "score"})

    @classmethod
    def outputs(cls, spec: HeadSpec) -> int:
        return spec.bins

    def __init__(self, hidden_size: int, spec: HeadSpec, generator: torch.Generator, first: nn.Linear | None = None):
        super().__init__(hidden_size, spec, generator, first)
        self.register_buffer("centres", torch.linspace(0.0, self.label_max, spec.bins), persistent=False)

    def finish(self, x: Tensor) -> HeadOutput:
        score = x.softmax(dim=-1) @ self.centres  # (B,) expected score
        return HeadOutput(logits=x, score=score, bin_centres=self.centres)


def task_heads(task: str) -> Registry[type[Head]]:
    if task not in HEADS:
        raise ValueError(f"unknown task {task!r}; choose from: {', '.join(sorted(HEADS))}")
    return HEADS[task]


def head_class(task: str, kind: str) -> type[Head]:
    return task_heads(task).get(kind)


def encoding_problem(task: str, cls: type[Head], pair_encoding: str | None) -> str | None:
    """Why ``cls`` cannot read batches built with ``pair_encoding``, or None. Single-sentence
    heads have no pairs, so any pair encoding suits them."""
    if pair_encoding is None or cls.encoding in ("single", pair_encoding):
        return None
    fits = [k for k in HEADS[task] if HEADS[task].get(k).encoding == pair_encoding]
    return (f"heads.{task}.kind {cls.kind!r} reads pair encoding {cls.encoding!r}, but the pair encoding is "
            f"{pair_encoding!r}; heads.{task} kinds for {pair_encoding!r}: {', '.join(fits) or 'none'}")
