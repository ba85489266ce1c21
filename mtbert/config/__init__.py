"""The run config: typed dataclasses, read from YAML, one flat dotted name per setting.

``optim.lr`` names the same setting in the YAML file (``optim: {lr: ...}``), in ``--set optim.lr=1e-5``,
in a search space, in TensorBoard tags and in an exported config. Everything a run needs is checked
here, before any data or weights load: unknown keys (with "did you mean"), types, ranges, and names
of plug-ins (heads, losses, schedules, gradient combiners).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

TASKS = ("sst", "para", "sts")


class ConfigError(ValueError):
    """A bad setting; the message names the file, the dotted key, the value and what is allowed."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.message = key, message
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}")


# ---- per-field checks, attached as dataclass field metadata -------------------------------------


def check(default: Any, rule: Callable[[Any], str | None] | None = None, **kw: Any) -> Any:
    """A dataclass field whose value must pass ``rule`` (which returns an error text or None)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule}, **kw)
    return field(default=default, metadata={"rule": rule}, **kw)


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def optional_positive(v: int | None) -> str | None:
    return None if v is None or v > 0 else "must be > 0 or null"


def in_range(lo: float, hi: float, hi_open: bool = False) -> Callable[[float], str | None]:
    def rule(v: float) -> str | None:
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"must be in [{lo}, {hi}{')' if hi_open else ']'}"

    return rule


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        return None if v in choices else f"must be one of: {', '.join(map(str, choices))}"

    return rule


def positive_list(v: list[int]) -> str | None:
    return None if all(x > 0 for x in v) else "every size must be > 0"


# ---- the sections ------------------------------------------------------------------------------


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


@dataclass
class ModelConfig:
    encoder: str = "all-MiniLM-L6-v2"  # any load_encoder source: a directory, a hub name, "tiny"
    freeze_depth: int = check(0, non_negative)
    shared_pair_layer: bool = False  # one first layer shared by the para and sts heads (paper 003)


def known_features(v: list[str]) -> str | None:
    allowed = ("u", "v", "diff", "prod")
    if not v or any(f not in allowed for f in v):
        return f"must be a non-empty list of: {', '.join(allowed)}"
    return None


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


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grad: GradConfig = field(default_factory=GradConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)
    # The run's stages in order; empty means one multitask phase of train.max_steps.
    phases: list[PhaseConfig] = field(default_factory=list)

    def flat(self) -> dict[str, Any]:
        """``{"optim.lr": 5e-05, ...}``: every setting under its dotted name."""
        return flatten(dataclasses.asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any], source: str = "--set") -> "RunConfig":
        """A copy with dotted keys replaced; string values are read as YAML (``"1e-5"`` -> float)."""
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, parse_value(value) if isinstance(value, str) else value, source)
        return from_dict(data, source)


# ---- reading -----------------------------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML itself would keep the
    last silently, so a setting written twice would be half-ignored)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} on line {line} (first on line {seen[key]}); a key may appear once",
                key_node.start_mark,
            )  # fmt: skip
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str) -> Any:
    """Plain values from YAML text: ``yaml.safe_load``, refusing duplicate keys (``UniqueKeyLoader``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML's own text spans several lines)."""
    refused = refused_tag(error)
    if refused:
        return refused
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or ""
        if problem.startswith("duplicate key"):
            return problem
        return f"not valid YAML{where}: {problem}".rstrip(": ")
    return f"not valid YAML: {' '.join(str(error).split())}"


def read_text(path: Path, expected: str) -> str:
    """A text file's contents, or a ConfigError saying why it cannot be read (a folder, missing,
    unreadable, not UTF-8)."""
    if path.is_dir():
        raise ConfigError("file", f"{path} is a folder; expected {expected}", None)
    if not path.is_file():
        raise ConfigError("file", f"{path} does not exist; expected {expected}", None)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("file", f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); expected {expected}",
                          None) from None  # fmt: skip
    except OSError as e:
        raise ConfigError("file", f"{path} cannot be read ({e.strerror or e}); expected {expected}", None) from None


def refused_tag(error: yaml.YAMLError) -> str | None:
    """The message for a YAML tag that would build a Python object (``!!python/object/...``), which
    a safe loader refuses; None for any other YAML error."""
    tag = (getattr(error, "problem", None) or "").partition("constructor for the tag ")[2]
    if not tag:
        return None
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    tag = tag.replace("tag:yaml.org,2002:", "!!")
    return f"tag {tag}{where} is refused: YAML is read with safe_load, which builds plain values, never Python objects"


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, section: bool = True) -> RunConfig:
    """Read a run config from YAML (``yaml.safe_load`` only), apply ``--set`` overrides and validate.

    Top-level sections other than the run's (a search space's ``search:`` and ``tune:``) are left to
    their readers when ``section`` is true.
    """
    path = Path(path)
    text = read_text(path, "a run config YAML file (e.g. configs/example.yaml)")
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError("yaml", yaml_problem(e), str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("top level", f"must be a mapping of sections, got {type(data).__name__}", str(path))
    if section:
        data = {k: v for k, v in data.items() if k not in ("search", "tune")}
    config = from_dict(data, str(path))
    if overrides:
        config = config.with_overrides(overrides)
    return config


def from_dict(data: dict[str, Any], source: str | None = None) -> RunConfig:
    config = _build(RunConfig, data, "", source)
    validate(config, source)
    return config


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML scalars and lists (``1e-5``, ``true``, ``[128, 64]``, ``null``)."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    return value


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"{item!r} must look like KEY=VALUE, e.g. optim.lr=1e-5")
        out[key.strip()] = value
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def all_keys() -> list[str]:
    return list(RunConfig().flat())


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str | None) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):  # phases.1.steps
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:i])
                allowed = f"must be 0 to {len(node) - 1}" if node else f"{where} is empty: give {where} first"
                raise ConfigError(key, f"has index {part!r}, but {where} has {len(node)} item(s); {allowed}", source)
            if i == len(parts) - 1:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if isinstance(node, dict) and part == "set" and "set" in node and "kind" in node and i < len(parts) - 1:
            node[part] = {**node.get(part, {}), ".".join(parts[i + 1 :]): value}  # phases.0.set.optim.lr
            return
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(key, f"unknown setting{_did_you_mean(key, all_keys())}", source)
        if i == len(parts) - 1:
            if isinstance(node[part], dict) and not isinstance(value, dict):
                raise ConfigError(key, f"is a section; set one of its keys ({', '.join(node[part])})", source)
            node[part] = value
        else:
            node = node[part]


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type, data: Any, prefix: str, source: str | None, base: Any = None) -> Any:
    """``cls`` from a mapping; keys not given keep their value in ``base`` (by default, ``cls()``),
    so a partial ``heads.para`` section keeps para's own default head kind."""
    base = cls() if base is None else base
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(where, f"must be a mapping, got {_show(data)}", source)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = [f"{prefix}{n}" for n in names]
            raise ConfigError(
                full, f"unknown setting{_did_you_mean(full, known)}; allowed here: {', '.join(names)}", source
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, f"{full}.", source, getattr(base, key))
        else:
            values[key] = _coerce(value, hint, full, source)
    obj = dataclasses.replace(base, **values)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):  # .inf passes "> 0"; nan passes nothing
            default = getattr(cls(), f.name)
            allowed = "a finite number or null (the default)" if default is None else f"a finite number (default {default})"
            raise ConfigError(f"{prefix}{f.name}", f"is {value}, but must be {allowed}", source)
        rule = f.metadata.get("rule")
        problem = rule(value) if rule else None
        if problem:
            raise ConfigError(f"{prefix}{f.name}", f"is {_show(value)}, but {problem}", source)
    return obj


def _coerce(value: Any, hint: Any, key: str, source: str | None) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is list and dataclasses.is_dataclass(args[0]):  # phases: a list of sections
        if not isinstance(value, list):
            raise ConfigError(key, f"is {_show(value)}, but must be a list, e.g. [multitask, specialist]", source)
        return [_build_item(args[0], v, f"{key}.{i}", source) for i, v in enumerate(value)]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"is {_show(value)}, but must be a list of {args[0].__name__}", source)
        return [_coerce(v, args[0], key, source) for v in value]
    if hint is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(key, f"is {_show(value)}, but must be a mapping of dotted settings to values", source)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(key, f"is {_show(value)}, but must be {_type_name(hint)}", source)


def _build_item(cls: type, value: Any, key: str, source: str | None) -> Any:
    """One list item of sections; a bare name is short for ``{kind: name}``."""
    if isinstance(value, str):
        value = {"kind": value}
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return _build(cls, value, f"{key}.", source)


def _type_name(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool, type(None), list)) else repr(value)


# ---- cross-field checks ------------------------------------------------------------------------


def validate(config: RunConfig, source: str | None = None) -> None:
    """Checks that span several settings or need the plug-in registries and the encoder's shape."""
    from mtbert.data import sampling
    from mtbert.methods import base as gradients
    from mtbert.model import heads
    from mtbert.train import losses

    names: list[tuple[str, Any, Any]] = [
        ("sampling.schedule", config.sampling.schedule, sampling.SCHEDULES),
        ("grad.method", config.grad.method, gradients.COMBINERS),
    ]
    for task in TASKS:
        names.append((f"heads.{task}.kind", getattr(config.heads, task).kind, heads.HEADS[task]))
        names.append((f"losses.{task}.kind", getattr(config.losses, task).kind, losses.LOSSES))
    for key, name, registry in names:
        if name not in registry:
            raise ConfigError(key, registry.unknown_message(name).replace(f"unknown {registry.key} ", "unknown "), source)
    for task in TASKS:
        head = getattr(config.heads, task)
        problem = heads.compatibility(task, head, getattr(config.losses, task), head.pair_encoding)
        if problem:
            raise ConfigError(f"heads.{task}.kind", problem, source)
    from mtbert.model.multitask import check_spec, head_specs, new_shared_layer

    specs = head_specs(config)
    for task, spec in specs.items():
        try:
            check_spec(task, heads.head_class(task, spec.kind), spec)
        except ValueError as e:
            raise ConfigError(f"heads.{task}", str(e), source) from None
    if config.model.shared_pair_layer:
        import torch

        try:
            new_shared_layer(specs, 8, torch.Generator())
        except ValueError as e:
            raise ConfigError("model.shared_pair_layer", str(e), source) from None
    if config.sampling.schedule == "ratios" and not any(dataclasses.astuple(config.sampling.ratios)):
        raise ConfigError("sampling.ratios", "are all zero, but at least one task needs a ratio > 0", source)
    if config.train.eval_every > config.train.max_steps:
        raise ConfigError(
            "train.eval_every",
            f"is {config.train.eval_every}, but must be <= train.max_steps ({config.train.max_steps})",
            source,
        )
    validate_phases(config, source)
    layers = encoder_layers(config.model.encoder)
    if layers is not None and config.model.freeze_depth > layers:
        raise ConfigError(
            "model.freeze_depth",
            f"is {config.model.freeze_depth}, but {config.model.encoder!r} has {layers} layers "
            f"(allowed: 0 to {layers}; {layers} trains the heads only)",
            source,
        )


def phase_config(config: RunConfig, index: int) -> RunConfig:
    """The run config phase ``index`` trains with: its ``set:`` applied, its steps, learning rates
    and evaluation interval in ``train``/``optim``, and no phases of its own."""
    phase = config.phases[index]
    data = config.to_dict()
    data["phases"] = []
    try:
        for key, value in phase.set.items():
            set_dotted(data, key, parse_value(value) if isinstance(value, str) else value, None)
        t, o = data["train"], data["optim"]
        t["max_steps"] = phase.steps or t["max_steps"]
        t["eval_every"] = min(phase.eval_every or t["eval_every"], t["max_steps"])
        o["lr"] = phase.lr or o["lr"]
        o["head_lr"] = phase.head_lr or o["head_lr"]
        return from_dict(data)
    except ConfigError as e:  # a bad value in this phase's set: name it where the user wrote it
        key = e.key if e.key.startswith("phases.") else f"phases.{index}.set.{e.key}"
        raise ConfigError(key, e.message) from None


def run_phases(config: RunConfig) -> list[PhaseConfig]:
    """The phases a run goes through: ``phases``, or one multitask phase."""
    return list(config.phases) or [PhaseConfig(kind="multitask")]


def trained_phases(config: RunConfig) -> list[RunConfig]:
    """The configs of the phases that take optimizer steps on the tasks (mlm phases take none)."""
    if not config.phases:
        return [config]
    return [phase_config(config, i) for i, p in enumerate(config.phases) if p.kind != "mlm"]


def total_steps(config: RunConfig) -> int:
    """The global step of a run's last evaluation: the steps of its multitask and specialist phases."""
    return sum(c.train.max_steps for c in trained_phases(config))


def evaluations(config: RunConfig) -> int:
    """Evaluations a run reports: every ``eval_every`` steps and at the end of each trained phase."""
    return sum(math.ceil(c.train.max_steps / c.train.eval_every) for c in trained_phases(config))


# ---- resuming ----------------------------------------------------------------------------------

_SAME_MODEL = "the model is rebuilt from the checkpoint's own config, so a new value would not be used"
_SAME_DATA = "the task streams go on where they were, in the same training examples and batches"
# The settings a resumed run (``--resume``) shares with its checkpoint, and why; a key covers every
# setting under it, ``*`` is any phase. The rest may change at resume: steps, learning rates and
# their schedule, weight decay, clipping, losses and their weights, the gradient method's own
# parameters, evaluation (interval, dev subset, patience, final evaluation), and where things go and
# run (out_dir, data.dir, data.cache_dir, device, bf16).
RESUME_FIXED: dict[str, str] = {
    "model": _SAME_MODEL,  # encoder, freeze_depth (also the optimizer's parameters), shared_pair_layer
    "heads": _SAME_MODEL,
    "data.max_train_per_task": _SAME_DATA,
    "data.extra_sst": _SAME_DATA,
    "data.max_length": _SAME_DATA + " (token lengths decide the length-bucketed batches)",
    "data.pair_separator": _SAME_DATA,
    "train.seed": "the data subsets, the order of the task streams and the task schedule are drawn from it",
    "sampling": "the task schedule goes on with the plan it was saved with",
    "grad.method": "the saved optimizer and gradient-combiner state belong to it",
    "mlm": "mlm phases end before the first checkpoint: their work is in the weights",
    "phases": "the run's phases (how many, in what order)",
    "phases.*.kind": "the run's phases (how many, in what order)",
    "phases.*.heads_only": "the specialist phase's frozen encoder",
}


def resume_fixed(key: str) -> str | None:
    """Why dotted ``key`` is fixed at resume (it is under a key of ``RESUME_FIXED``), else None."""
    parts = key.split(".")
    for fixed, why in RESUME_FIXED.items():
        want = fixed.split(".")
        if fixed == "phases" and len(parts) > 1:  # the list itself; its items' keys are listed apart
            continue
        if len(parts) >= len(want) and all(w in ("*", p) for w, p in zip(want, parts)):
            return why
    return None


def resume_conflicts(saved: RunConfig, new: RunConfig) -> list[str]:
    """Each setting fixed at resume (``RESUME_FIXED``) that ``new`` changes from the checkpoint's
    ``saved`` config, as ``"key is NEW, but the checkpoint's is OLD"``; a phase's ``set:`` counts."""
    out: list[str] = []

    def compare(old: dict[str, Any], now: dict[str, Any], prefix: str, skip: set[str]) -> None:
        for key in sorted(set(old) | set(now)):
            why = resume_fixed(key)
            if key in skip or why is None or old.get(key) == now.get(key):
                continue
            skip.add(key)
            out.append(f"{prefix}{key} is {_show(now.get(key))}, but the checkpoint's is {_show(old.get(key))} ({why})")

    top = {k: v for k, v in saved.flat().items() if k != "phases"}
    reported: set[str] = set()
    compare(top, {k: v for k, v in new.flat().items() if k != "phases"}, "", reported)
    old_phases, new_phases = run_phases(saved), run_phases(new)
    old_kinds, new_kinds = [p.kind for p in old_phases], [p.kind for p in new_phases]
    if old_kinds != new_kinds:  # "phases" and "phases.*.kind"
        out.append(f"phases is {_show(new_kinds)}, but the checkpoint's is {_show(old_kinds)} ({RESUME_FIXED['phases']})")
        return out
    fields = [k.split(".")[2] for k in RESUME_FIXED if k.startswith("phases.*.") and k != "phases.*.kind"]
    for i, (old_phase, new_phase) in enumerate(zip(old_phases, new_phases)):
        for name in fields:
            if getattr(old_phase, name) != getattr(new_phase, name):
                out.append(f"phases.{i}.{name} is {_show(getattr(new_phase, name))}, but the checkpoint's is "
                           f"{_show(getattr(old_phase, name))} ({RESUME_FIXED['phases.*.' + name]})")  # fmt: skip
        # what the phase trains with, its set: applied (sampling, grad.method, train.seed may change there)
        old_cfg = (phase_config(saved, i) if saved.phases else saved).flat()
        new_cfg = (phase_config(new, i) if new.phases else new).flat()
        compare({k: v for k, v in old_cfg.items() if k != "phases"},
                {k: v for k, v in new_cfg.items() if k != "phases"}, f"phases.{i}.set.", set(reported))  # fmt: skip
    return out


def validate_phases(config: RunConfig, source: str | None) -> None:
    kinds = [p.kind for p in config.phases]
    if kinds and all(k == "mlm" for k in kinds):
        raise ConfigError("phases", f"is {kinds}, but a run needs a multitask or specialist phase after mlm", source)
    for i, kind in enumerate(kinds):
        if kind == "mlm" and any(k != "mlm" for k in kinds[:i]):
            raise ConfigError(f"phases.{i}.kind", f"is 'mlm' after {kinds[:i]}; mlm phases come first "
                              "(fine-tuning starts from their encoder)", source)
        if kind == "specialist" and i != len(kinds) - 1:
            raise ConfigError(f"phases.{i}.kind", f"is 'specialist' in {kinds}, but the specialist phase must be "
                              "the last (its model has one encoder per task)", source)
    for i, phase in enumerate(config.phases):
        if phase.heads_only and phase.kind != "specialist":
            raise ConfigError(f"phases.{i}.heads_only", f"is true, but only a specialist phase trains heads alone "
                              f"(this one is {phase.kind!r})", source)
        for key in phase.set:
            if not any(key == p or key.startswith(p + ".") for p in PHASE_SECTIONS):
                raise ConfigError(f"phases.{i}.set.{key}", "cannot change per phase; a phase may set keys under: "
                                  + ", ".join(PHASE_SECTIONS), source)
        try:
            phase_config(config, i)
        except ConfigError as e:
            raise ConfigError(e.key, e.message, source) from None
        if phase.eval_every and phase.steps and phase.eval_every > phase.steps:
            raise ConfigError(f"phases.{i}.eval_every", f"is {phase.eval_every}, but must be <= phases.{i}.steps "
                              f"({phase.steps})", source)


def encoder_layers(source: str) -> int | None:
    """The encoder's layer count from its config.json alone (no weights), or None if unknown yet."""
    from mtbert.model.pretrained import DEFAULT_ENCODER, TINY_ENCODER, TINY_SHAPE, EncoderLoadError, default_encoder_dir

    if source == TINY_ENCODER:
        return TINY_SHAPE["num_hidden_layers"]
    try:
        directory = default_encoder_dir() if source == DEFAULT_ENCODER else Path(source).expanduser()
    except EncoderLoadError:
        return None
    config_file = directory / "config.json"
    if config_file.is_file():
        return int(json.loads(config_file.read_text()).get("num_hidden_layers", 12))
    return None
