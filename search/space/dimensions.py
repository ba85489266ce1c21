"""Search dimensions: a space file's ``search:`` section, one dimension per dotted run setting.

    optim.lr: {loguniform: [1.0e-5, 2.0e-4]}
    model.freeze_depth: {int: [0, 4], step: 2}
    grad.weights.sst: {uniform: [0.5, 2.0], when: {grad.method: [pcgrad_weighted]}}
    phases: {choice: [[multitask], [multitask, specialist]]}

One small class per kind (``Choice``, ``IntRange``, ``Uniform``, ``LogUniform``), registered in
``KINDS`` under the name the file uses: each reads its own body, asks the trial for a value and
knows which values to check. ``Dimension(key, "choice", ...)`` builds the class registered for the
kind. Optuna suggests each dimension under its key as the parameter name, through the trial object
it is handed (this module imports no Optuna).

``when`` makes a dimension exist only while other dimensions hold one of the listed values
(``search.space.conditions`` checks and orders them). One key may hold a list of alternatives, each
with its own ``when`` on one shared key with no value in common: Optuna needs a fixed set of choices
per parameter name, so alternative ``i`` is suggested as ``<key>#<i>``.

This module knows the format only; what a key and its values mean to a run is ``search.space.checks``'.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from mtbert.errors import did_you_mean, show
from search.errors import SpaceError

OPTIONS = ("log", "step", "when")
EXAMPLE = "{uniform: [0.1, 0.5]}, {loguniform: [1.0e-5, 1.0e-4]}, {int: [0, 4]} or {choice: [a, b]}"
_YAML11_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")

KINDS: dict[str, type[Dimension]] = {}  # {"choice": Choice, ...}, filled by ``register``


def register(kind: str) -> Callable[[type[Dimension]], type[Dimension]]:
    def add(cls: type[Dimension]) -> type[Dimension]:
        cls.KIND = kind
        KINDS[kind] = cls
        return cls

    return add


@dataclass
class Dimension:
    """What every kind has: the key it sets, its conditions and where it was written."""

    key: str  # the dotted run setting it sets
    kind: str  # the name it is registered under: choice, int, uniform or loguniform
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)  # {dimension key: values it must hold}
    name: str = ""  # Optuna's parameter name: the key, or "<key>#<i>" for alternative i
    origin: str = field(default="search", compare=False)  # where it was written: search, --set search ...

    KIND: ClassVar[str] = ""
    # uniform and loguniform: a condition cannot name it (no value it holds exactly), and no check
    # pairs it with another dimension (no run check relates a continuous setting to another setting)
    continuous: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # Dimension(key, "choice", ...) is a Choice: the class registered for the kind
        kind = args[1] if len(args) > 1 else kwargs.get("kind")
        return super().__new__(KINDS[kind] if cls is Dimension else cls)

    def __post_init__(self) -> None:
        self.name = self.name or self.key

    @property
    def where(self) -> str:
        return f"{self.origin}.{self.name}"

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], where: str, path: Path, **common: Any) -> Dimension:
        """The dimension ``spec`` (a mapping with this kind's key) describes."""
        raise NotImplementedError

    def suggest(self, trial: Any) -> Any:
        """The value ``trial`` (an ``optuna.Trial``, or anything with its ``suggest_*``) suggests, decoded."""
        raise NotImplementedError

    def decode(self, raw: Any) -> Any:
        """The real value of a suggested one."""
        raise NotImplementedError

    def values(self) -> list[Any]:
        """The values to check a run config with."""
        raise NotImplementedError

    def can_take(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def value_text(self, value: Any) -> str:
        """One of its values, as an error names it (``choice 'sum'``, ``low 0.1``)."""
        raise NotImplementedError

    def up_to(self, limit: int) -> Dimension | None:
        """The dimension cut to values <= ``limit`` (an encoder's layers), or None if nothing is left."""
        raise NotImplementedError

    def default(self) -> Any:
        return self.values()[0]

    def active(self, values: dict[str, Any]) -> bool:
        """Whether every condition holds; ``values`` maps the keys decided so far to their values."""
        return all(k in values and any(same(values[k], v) for v in vals) for k, vals in self.when.items())


@register("choice")
class Choice(Dimension):
    """``{choice: [sum, pcgrad]}``: any values, lists and mappings too."""

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], where: str, path: Path, **common: Any) -> Dimension:
        return cls(key, cls.KIND, choices=_parse_choices(spec, where, path), **common)

    @property
    def encoded(self) -> bool:
        """Optuna's categorical values are scalars: list and mapping choices travel as JSON text."""
        return any(isinstance(c, (list, dict)) for c in self.choices)

    def encode(self, value: Any) -> Any:
        return json.dumps(value) if self.encoded else value

    def suggest(self, trial: Any) -> Any:
        return self.decode(trial.suggest_categorical(self.name, [self.encode(c) for c in self.choices]))

    def decode(self, raw: Any) -> Any:
        """The choice a suggested value stands for (JSON text of a list choice, or the value itself)."""
        for choice in self.choices:
            if (self.encoded and raw == json.dumps(choice)) or same(raw, choice):
                return copy.deepcopy(choice)
        raise ValueError(f"{self.where}: {show(raw)} is not one of its choices {self.choices}")

    def values(self) -> list[Any]:
        return list(self.choices)

    def can_take(self, value: Any) -> bool:
        return any(same(value, c) for c in self.choices)

    def describe(self) -> str:
        return f"choice [{', '.join(c if isinstance(c, str) else flow(c) for c in self.choices)}]"

    def value_text(self, value: Any) -> str:
        return f"choice {flow(value)}"

    def up_to(self, limit: int) -> Dimension | None:
        fits = [c for c in self.choices if isinstance(c, int) and c <= limit]
        return dataclasses.replace(self, choices=fits) if fits else None


class Range(Dimension):
    """``{KIND: [low, high]}`` with an optional ``step`` (and ``log`` for int)."""

    integer: ClassVar[bool] = False

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], where: str, path: Path, **common: Any) -> Dimension:
        low, high = cls.parse_bounds(spec[cls.KIND], where, path)
        step = cls.parse_step(read_number(spec.get("step")), low, high, where, path)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise SpaceError(path, f"{where}.log", f"log is {show(log)}, but must be true or false")
        if log:
            cls.check_log(low, step, f"{where}.log", path)
        return cls(key, cls.KIND, low, high, step, log, **common)

    @classmethod
    def parse_bounds(cls, body: Any, where: str, path: Path) -> tuple[float, float]:
        body = read_numbers(body)
        kind, what = cls.KIND, "integers" if cls.integer else "numbers"
        ok = isinstance(body, list) and len(body) == 2
        ok = ok and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in body)
        if ok and cls.integer:
            ok = all(float(b).is_integer() for b in body)
            body = [int(b) for b in body] if ok else body
        if not ok:
            raise SpaceError(path, where, f"{kind} bounds must be two {what} [low, high], got {show(body)}")
        low, high = body
        if not all(math.isfinite(b) for b in body):
            raise SpaceError(path, where, f"{kind} bounds are [{low:g}, {high:g}], but must be finite numbers "
                                          "(no .inf or .nan)")  # fmt: skip
        if not low < high:
            raise SpaceError(path, where, f"{kind} range [{low:g}, {high:g}] is empty: low must be < high (a single "
                                          "value belongs in the run config)")  # fmt: skip
        if not math.isfinite(high - low):
            raise SpaceError(path, where, f"{kind} range [{low:g}, {high:g}] is too wide: high - low must be a finite "
                                          "number")  # fmt: skip
        return low, high

    @classmethod
    def parse_step(cls, step: Any, low: float, high: float, where: str, path: Path) -> float | None:
        if step is None:
            return None
        kind, integer = cls.KIND, cls.integer
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0 or (
            integer and step % 1
        ):
            need = "an integer >= 1" if integer else "a finite number > 0"
            raise SpaceError(path, f"{where}.step", f"step is {show(step)}, but must be {need}")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9:
            below, above = low + math.floor(steps) * step, low + math.ceil(steps) * step
            raise SpaceError(path, f"{where}.step", f"{kind} range [{low:g}, {high:g}] is not a whole number of steps "
                                                    f"of {step:g}; end it at {below:g} or {above:g}")  # fmt: skip
        return int(step) if integer else step

    @classmethod
    def check_log(cls, low: float, step: float | None, where: str, path: Path) -> None:
        raise SpaceError(path, where, f"log is for int ranges; a {cls.KIND} range on a log scale is loguniform")

    def decode(self, raw: Any) -> Any:
        return int(raw) if self.integer else float(raw)

    def values(self) -> list[Any]:
        """Both ends of the range (the high end on the step grid)."""
        high = self.high
        if self.step:  # the last value on the grid
            high = self.low + math.floor((self.high - self.low) / self.step + 1e-9) * self.step
        return [self.low, int(high) if self.integer else high]

    def can_take(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.integer:
            return float(value).is_integer() and (value - self.low) % (self.step or 1) == 0
        return True

    def describe(self) -> str:
        text = f"{self.kind} [{self.low:g}, {self.high:g}]"
        return text + (f" step {self.step:g}" if self.step else "") + (" log" if self.log else "")

    def value_text(self, value: Any) -> str:
        return f"{'low' if value == self.low else 'high'} {value:g}"

    def up_to(self, limit: int) -> Dimension | None:
        if self.low >= limit:
            return None
        high = min(self.high, limit)
        step = self.step if self.step and (high - self.low) % self.step == 0 else None
        return dataclasses.replace(self, high=high, step=step)


@register("int")
class IntRange(Range):
    """``{int: [0, 4], step: 2}``, ``{int: [1, 64], log: true}``."""

    integer = True

    @classmethod
    def check_log(cls, low: float, step: float | None, where: str, path: Path) -> None:
        if low < 1 or (step or 1) != 1:
            raise SpaceError(path, where, f"a log int range needs low >= 1 and no step, got low {low:g}")

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)


@register("loguniform")
class LogUniform(Range):
    """``{loguniform: [1.0e-5, 1.0e-4]}``: a float range on a log scale (Optuna's has no step)."""

    continuous = True

    @classmethod
    def parse_bounds(cls, body: Any, where: str, path: Path) -> tuple[float, float]:
        low, high = super().parse_bounds(body, where, path)
        if low <= 0:
            raise SpaceError(path, where, f"loguniform bounds are [{low:g}, {high:g}], but must be > 0 (a log scale "
                                          "has no 0); use uniform for a range from 0")  # fmt: skip
        return low, high

    @classmethod
    def parse_step(cls, step: Any, low: float, high: float, where: str, path: Path) -> float | None:
        if step is None:
            return None
        raise SpaceError(path, f"{where}.step",
                         "loguniform takes no step (Optuna's log scale has none); use uniform with a step")  # fmt: skip

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=True)


@register("uniform")
class Uniform(Range):
    """``{uniform: [0.1, 0.5]}``, ``{uniform: [0.0, 1.0], step: 0.25}``."""

    continuous = True

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=False)


# ---- values ------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal and of the same kind: a condition on [1] is not met by true."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def flow(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else show(value)


def read_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (an exponent, no dot) as a string; read it as the number it is."""
    return float(value) if isinstance(value, str) and _YAML11_FLOAT.match(value) else value


def read_numbers(value: Any) -> Any:
    """``read_number`` through lists and mappings."""
    if isinstance(value, list):
        return [read_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: read_numbers(v) for k, v in value.items()}
    return read_number(value)


def non_finite(value: Any, key: str = "") -> tuple[str, float] | None:
    """The first infinite or NaN number in ``value`` (a number, or in a list or mapping) and the
    dotted key it is at under ``key``; None if there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = non_finite(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


# ---- reading -----------------------------------------------------------------------------------


def parse_search(entries: dict[str, tuple[Any, str]], path: Path) -> list[Dimension]:
    """``entries``: {key: (spec, origin)}; a spec is a dimension mapping or a list of alternatives."""
    dims: list[Dimension] = []
    for key, (spec, origin) in entries.items():
        if isinstance(spec, list) and spec and all(isinstance(s, dict) for s in spec):
            if len(spec) == 1:
                dims.append(parse_dimension(key, spec[0], path, key, origin))
                continue
            for i, alternative in enumerate(spec):
                dim = parse_dimension(key, alternative, path, f"{key}#{i}", origin)
                if not dim.when:
                    raise SpaceError(
                        path,
                        dim.where,
                        f"is one of {len(spec)} alternatives for {key}, so it needs "
                        "a when: condition saying when it applies",
                    )
                dims.append(dim)
        else:
            dims.append(parse_dimension(key, spec, path, key, origin))
    return dims


def parse_dimension(key: str, spec: Any, path: Path, name: str, origin: str = "search") -> Dimension:
    where = f"{origin}.{name}"
    if not isinstance(spec, dict):
        raise SpaceError(
            path,
            where,
            f"is {show(spec)}, but must be a dimension such as {EXAMPLE}; a fixed value belongs in the run config",
        )
    names = sorted(KINDS)
    kinds = [k for k in spec if k in KINDS]
    for k in spec:
        if k not in KINDS and k not in OPTIONS:
            raise SpaceError(
                path,
                where,
                f"unknown dimension kind {show(k)}{did_you_mean(k, (*names, *OPTIONS))}; "
                f"kinds: {', '.join(names)}; options: {', '.join(OPTIONS)}",
            )
    if len(kinds) != 1:
        got = f"has {len(kinds)} kinds ({', '.join(kinds)})" if kinds else "has no kind"
        raise SpaceError(path, where, f"{got}; give one of: {', '.join(names)}")
    when = _parse_when(spec.get("when"), f"{where}.when", path)
    return KINDS[kinds[0]].parse(key, spec, where, path, when=when, name=name, origin=origin)


def _parse_choices(spec: dict[str, Any], where: str, path: Path) -> list[Any]:
    choices = read_numbers(spec["choice"])
    if not isinstance(choices, list) or not choices:
        raise SpaceError(
            path, where, f"choice is {show(choices)}, but must be a non-empty list of values, e.g. [sum, pcgrad]"
        )
    for option in ("step", "log"):
        if option in spec:
            raise SpaceError(path, f"{where}.{option}", "a choice takes no step or log; those are for ranges")
    for i, c in enumerate(choices):
        if any(same(c, d) for d in choices[:i]):
            raise SpaceError(path, where, f"choice has {flow(c)} twice; list each value once")
        bad = non_finite(c)
        if bad is not None:
            inside = f" (at {bad[0]})" if bad[0] else ""
            raise SpaceError(path, where, f"choice {flow(c)} holds {bad[1]}{inside}, but every number in a "
                                          "choice must be finite (no .inf or .nan)")  # fmt: skip
    return choices


def _parse_when(raw: Any, where: str, path: Path) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(
            path,
            where,
            f"is {show(raw)}, but must be a mapping {{dimension key: [values]}}, "
            "e.g. {grad.method: [pcgrad_weighted]}",
        )
    when = {}
    for key, values in raw.items():
        values = read_numbers(values)
        if not isinstance(values, list) or not values:
            raise SpaceError(
                path,
                f"{where}.{key}",
                f"is {show(values)}, but must be a non-empty list of the "
                f"values that turn the dimension on, e.g. [{show(values)}]",
            )
        when[str(key)] = values
    return when
