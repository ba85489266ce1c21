"""The sections of a run config, one dataclass each, every field with its default and rule.

``RunConfig`` (``mtbert.config.run``) gathers them; nothing here reads a file or knows a plug-in:
plug-in names (``heads.sst.kind``, ``grad.method``, ...) are checked by ``mtbert.validation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtbert.config.fields import (
    check,
    in_range,
    known_features,
    non_negative,
    one_of,
    optional_fraction,
    optional_positive,
    positive,
    positive_list,
)


@dataclass
class PerTask:
    """One number per task (sampling ratios, loss and gradient weights)."""

    sst: float = check(1.0, non_negative)
    para: float = check(1.0, non_negative)
    sts: float = check(1.0, non_negative)


@dataclass
class PerTaskCount:
    """One optional count per task (samples per epoch)."""

    sst: int | None = check(None, optional_positive)
    para: int | None = check(None, optional_positive)
    sts: int | None = check(None, optional_positive)


@dataclass
class DataConfig:
    dir: str | None = None  # else $MTBERT_DATA, else ./data
    max_train_per_task: int | None = check(None, optional_positive)
    max_eval_per_task: int | None = check(None, optional_positive)
    max_length: int = check(128, in_range(8, 512))
    pair_separator: str | None = None  # e.g. "[unused36]" between the two sentences (paper 000)
    extra_sst: str | None = check(None, one_of(None, "polar", "mild"))  # CFIMDB as SST (paper 003)
    cache_dir: str | None = None  # tokenised files; default $XDG_CACHE_HOME or ~/.cache, then mtbert/tokens
    # The share of every dev set held out as the report half (mtbert.data.holdout), chosen by a hash
    # of each row's id with holdout_seed: evaluations and every choice made on them read only the
    # other half; the report half is scored once, at the end. null: no half is held out.
    dev_holdout: float | None = check(None, optional_fraction)
    holdout_seed: int = 0


@dataclass
class ModelConfig:
    encoder: str = "all-MiniLM-L6-v2"  # any load_encoder source: a directory, a hub name, "tiny"
    freeze_depth: int = check(0, non_negative)
    shared_pair_layer: bool = False  # one first layer shared by the para and sts heads (paper 003)


@dataclass
class HeadConfig:
    kind: str = "mlp"
    pooling: str = check("cls", one_of("cls", "pooler", "mean"))
    hidden: list[int] = check([128], positive_list)
    dropout: float = check(0.3, in_range(0.0, 1.0, hi_open=True))  # papers 000, 001, 003 settled on 0.3
    # Pair tasks: "concat" ([CLS] A [SEP] B [SEP]) or "siamese" (each sentence alone); null takes the
    # one the head reads (siamese and cosine heads: siamese; the others: concat).
    pair_encoding: str | None = check(None, one_of(None, "concat", "siamese"))
    features: list[str] = check(["u", "v", "diff", "prod"], known_features)  # siamese heads (paper 003)
    bins: int = check(6, in_range(2, 100))  # sts "bins" head only (paper 004)


@dataclass
class HeadsConfig:
    sst: HeadConfig = field(default_factory=lambda: HeadConfig(kind="mlp"))
    para: HeadConfig = field(default_factory=lambda: HeadConfig(kind="concat"))
    sts: HeadConfig = field(default_factory=lambda: HeadConfig(kind="regression"))


@dataclass
class LossConfig:
    """A task's loss; each option is read only by the losses that have it."""

    kind: str = "ce"
    weight: float = check(1.0, non_negative)
    label_smoothing: float = check(0.0, in_range(0.0, 1.0, hi_open=True))  # ce
    bin_targets: str = check("soft", one_of("soft", "nearest"))  # ce on the sts bins head
    scale: float = check(20.0, positive)  # mnr: softmax temperature on cosines
    threshold: float = check(0.8, in_range(0.0, 1.0))  # mnr: positives are labels >= threshold * top label
    low: float = check(-1.0, in_range(-1.0, 1.0, hi_open=True))  # cosine_mse: cosine target of label 0


@dataclass
class LossesConfig:
    sst: LossConfig = field(default_factory=lambda: LossConfig(kind="ce"))
    para: LossConfig = field(default_factory=lambda: LossConfig(kind="bce"))
    sts: LossConfig = field(default_factory=lambda: LossConfig(kind="mse"))


@dataclass
class SamplingConfig:
    schedule: str = "round_robin"
    batch_size: int = check(32, positive)  # examples per task batch
    alpha: float = check(0.5, in_range(0.0, 1.0))  # proportional: p_i ~ N_i^alpha
    anneal_start: float = check(0.5, in_range(0.0, 1.0))  # annealed (paper 000): alpha cap
    anneal_end: float = check(0.1, in_range(0.0, 1.0))  # annealed: alpha after the last epoch
    mixed: bool = False  # proportional/annealed: tasks mixed within a batch instead of one per step
    per_step: str = check("equal", one_of("equal", "proportional"))  # round_robin (paper 003's variant)
    ratios: PerTask = field(default_factory=PerTask)  # ratios schedule (paper 002)
    samples_per_epoch: PerTaskCount = field(default_factory=PerTaskCount)


@dataclass
class OptimConfig:
    lr: float = check(5e-5, positive)  # encoder learning rate
    head_lr: float = check(1e-3, positive)
    weight_decay: float = check(0.01, non_negative)
    schedule: str = check("linear", one_of("constant", "linear", "slanted_triangular"))
    warmup: float = check(0.1, in_range(0.0, 1.0))  # fraction of max_steps
    clip_norm: float | None = check(1.0, optional_positive)


@dataclass
class TrainConfig:
    max_steps: int = check(1000, positive)
    eval_every: int = check(200, positive)
    seed: int = 0
    patience: int | None = check(None, optional_positive)  # evaluations without improvement
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    bf16: bool = True  # autocast on CUDA; ignored on the CPU
    out_dir: str = "runs/latest"
    # mtbert-train's last act: the best checkpoint on the full dev sets, plus dev and test prediction
    # files (Quora dev alone is 20k pairs: about two minutes on a 2-core CPU); false for quick runs.
    final_eval: bool = True


@dataclass
class GradConfig:
    method: str = "sum"
    weights: PerTask = field(default_factory=PerTask)  # weighted, pcgrad_weighted: per-task weights
    # Every N steps, the cosine of each task pair's encoder gradients and the fraction of
    # conflicting pairs (negative cosine) join the training metrics; 0 is off (no extra work).
    diagnose_every: int = check(0, non_negative)
    cagrad_c: float = check(0.5, in_range(0.0, 10.0))  # cagrad: radius of the ball around the mean gradient
    gradvac_beta: float = check(0.01, in_range(0.0, 1.0))  # gradvac: EMA rate of the target similarities
    uncertainty_lr: float | None = check(None, optional_positive)  # uncertainty: lr of the log-variances (null: optim.head_lr)


PHASE_KINDS = ("mlm", "multitask", "specialist")
# Settings a phase may change for itself (its ``set:``); the model's shape and the data stay fixed.
PHASE_SECTIONS = ("sampling", "optim", "grad", "losses", "train.patience", "train.seed")


@dataclass
class PhaseConfig:
    """One stage of a run. ``phases: [mlm, multitask, specialist]`` is the short form."""

    kind: str = check("multitask", one_of(*PHASE_KINDS))
    steps: int | None = check(None, optional_positive)  # null: train.max_steps (mlm: mlm.epochs decide)
    lr: float | None = check(None, optional_positive)  # encoder lr; null: optim.lr (mlm: mlm.lr)
    head_lr: float | None = check(None, optional_positive)  # null: optim.head_lr
    eval_every: int | None = check(None, optional_positive)  # null: train.eval_every
    # specialist only: train the re-initialised heads with the whole encoder frozen (paper 003)
    heads_only: bool = False
    set: dict = field(default_factory=dict)  # other dotted settings for this phase, e.g. sampling.ratios.sst: 0


@dataclass
class MlmConfig:
    """Further masked-LM pre-training on the task training sentences (paper 000)."""

    epochs: float = check(3.0, positive)  # paper 000's best (3 beat 18 and 40)
    lr: float = check(5e-5, positive)
    batch_size: int = check(32, positive)
    mask_prob: float = check(0.15, in_range(0.0, 1.0, hi_open=True))
    max_sentences: int | None = check(None, optional_positive)  # cap on the sentences used (a random subset)
    warmup: float = check(0.06, in_range(0.0, 1.0))
