"""``RunConfig``, the whole run's settings, and the one way to build it: from plain data
(``from_dict``), a YAML file (``read_config``) or dotted overrides (``with_overrides``), every field
checked by its rule on the way in.

``optim.lr`` names the same setting in the YAML file (``optim: {lr: ...}``), in ``--set optim.lr=1e-5``,
in a search space, in TensorBoard tags and in an exported config (``flat()``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtbert.config.fields import ConfigError
from mtbert.config.reader import load_yaml, read_text, yaml_problem
from mtbert.config.sections import (
    DataConfig,
    GradConfig,
    HeadsConfig,
    LossesConfig,
    MlmConfig,
    ModelConfig,
    OptimConfig,
    PhaseConfig,
    SamplingConfig,
    TrainConfig,
)
from mtbert.errors import did_you_mean, show_json, unknown_setting


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
        """A copy with dotted keys replaced; string values are read as YAML (``"1e-5"`` -> float).
        Each field is checked; the whole config is ``mtbert.validation.validate``'s to check."""
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, parse_value(value) if isinstance(value, str) else value, source)
        return from_dict(data, source)


def read_config(path: str | Path, section: bool = True) -> RunConfig:
    """Read a run config from YAML (``yaml.safe_load`` only); every field
    is checked, the plug-ins and the encoder are not (``mtbert.validation.load_config`` does both).

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
    return from_dict(data, str(path))


def from_dict(data: dict[str, Any], source: str | None = None) -> RunConfig:
    """A ``RunConfig`` from plain data, every field checked by its rule; checks that span several
    settings or need the plug-ins are ``mtbert.validation.validate``'s."""
    return _build(RunConfig, data, "", source)


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


def split_set(items: list[str], positional: str | None) -> tuple[list[str], str | None]:
    """``--set`` takes several KEY=VALUE after one flag, so a positional argument typed after them
    (``--set optim.lr=1e-5 train.max_steps=100 run.yaml``) lands among them; when the positional is
    missing and the last item has no '=', that item is the positional. (``--`` before it works too.)"""
    if positional is None and items and "=" not in items[-1]:
        return items[:-1], items[-1]
    return items, positional


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
            raise ConfigError(key, f"unknown setting{did_you_mean(key, all_keys())}", source)
        if i == len(parts) - 1:
            if isinstance(node[part], dict) and not isinstance(value, dict):
                raise ConfigError(key, f"is a section; set one of its keys ({', '.join(node[part])})", source)
            node[part] = value
        else:
            node = node[part]


def _build(cls: type, data: Any, prefix: str, source: str | None, base: Any = None) -> Any:
    """``cls`` from a mapping; keys not given keep their value in ``base`` (by default, ``cls()``),
    so a partial ``heads.para`` section keeps para's own default head kind."""
    base = cls() if base is None else base
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(where, f"must be a mapping, got {show_json(data)}", source)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = [f"{prefix}{n}" for n in names]
            raise ConfigError(full, unknown_setting(full, known, names), source)
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
            raise ConfigError(f"{prefix}{f.name}", f"is {show_json(value)}, but {problem}", source)
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
            raise ConfigError(key, f"is {show_json(value)}, but must be a list, e.g. [multitask, specialist]", source)
        return [_build_item(args[0], v, f"{key}.{i}", source) for i, v in enumerate(value)]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"is {show_json(value)}, but must be a list of {args[0].__name__}", source)
        return [_coerce(v, args[0], key, source) for v in value]
    if hint is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(key, f"is {show_json(value)}, but must be a mapping of dotted settings to values", source)
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
    raise ConfigError(key, f"is {show_json(value)}, but must be {_type_name(hint)}", source)


def _build_item(cls: type, value: Any, key: str, source: str | None) -> Any:
    """One list item of sections; a bare name is short for ``{kind: name}``."""
    if isinstance(value, str):
        value = {"kind": value}
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return _build(cls, value, f"{key}.", source)


def _type_name(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
