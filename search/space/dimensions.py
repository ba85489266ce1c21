"""Search dimensions: a space file's ``search:`` section, one dimension per dotted run setting.

    optim.lr: {loguniform: [1.0e-5, 2.0e-4]}
    model.freeze_depth: {int: [0, 4], step: 2}
    grad.weights.sst: {uniform: [0.5, 2.0], when: {grad.method: [pcgrad_weighted]}}
    phases: {choice: [[multitask], [multitask, specialist]]}

Optuna suggests each dimension under its key as the parameter name. ``when`` makes a dimension exist
only while other dimensions hold one of the listed values; the dimensions are ordered so that every
condition is decided before the dimension it guards. One key may hold a list of alternatives, each
with its own ``when`` on one shared key with no value in common: Optuna needs a fixed set of choices
per parameter name, so alternative ``i`` is suggested as ``<key>#<i>``.

This module knows the format only; what a key and its values mean to a run is ``search.space.file``'s.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.errors import SpaceError, did_you_mean, show

KINDS = ("choice", "int", "loguniform", "uniform")
OPTIONS = ("log", "step", "when")
EXAMPLE = "{uniform: [0.1, 0.5]}, {loguniform: [1.0e-5, 1.0e-4]}, {int: [0, 4]} or {choice: [a, b]}"
_YAML11_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


@dataclass
class Dimension:
    key: str  # the dotted run setting it sets
    kind: str  # choice, int, uniform or loguniform
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)  # {dimension key: values it must hold}
    name: str = ""  # Optuna's parameter name: the key, or "<key>#<i>" for alternative i
    origin: str = field(default="search", compare=False)  # where it was written: search, --set search ...

    def __post_init__(self) -> None:
        self.name = self.name or self.key

    @property
    def where(self) -> str:
        return f"{self.origin}.{self.name}"

    @property
    def encoded(self) -> bool:
        """Optuna's categorical values are scalars: list and mapping choices travel as JSON text."""
        return self.kind == "choice" and any(isinstance(c, (list, dict)) for c in self.choices)

    def suggest(self, trial: Any) -> Any:
        """The value ``trial`` (an ``optuna.Trial``) suggests, decoded."""
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.name, [self.encode(c) for c in self.choices]))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.kind == "loguniform")

    def encode(self, value: Any) -> Any:
        return json.dumps(value) if self.encoded else value

    def decode(self, raw: Any) -> Any:
        """The real value of a suggested one (JSON text of a list choice, or the value itself)."""
        if self.kind != "choice":
            return int(raw) if self.kind == "int" else float(raw)
        for choice in self.choices:
            if (self.encoded and raw == json.dumps(choice)) or _same(raw, choice):
                return copy.deepcopy(choice)
        raise ValueError(f"{self.where}: {show(raw)} is not one of its choices {self.choices}")

    def values(self) -> list[Any]:
        """The values to check a run config with: every choice, or both ends of the range."""
        if self.kind == "choice":
            return list(self.choices)
        high = self.high
        if self.step:  # the last value on the grid
            high = self.low + math.floor((self.high - self.low) / self.step + 1e-9) * self.step
        return [self.low, int(high) if self.kind == "int" else high]

    def default(self) -> Any:
        return self.values()[0]

    def can_take(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.kind == "int":
            return float(value).is_integer() and (value - self.low) % (self.step or 1) == 0
        return True

    def active(self, values: dict[str, Any]) -> bool:
        """Whether every condition holds; ``values`` maps the keys decided so far to their values."""
        return all(k in values and any(_same(values[k], v) for v in vals) for k, vals in self.when.items())

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice [{', '.join(c if isinstance(c, str) else _flow(c) for c in self.choices)}]"
        text = f"{self.kind} [{self.low:g}, {self.high:g}]"
        return text + (f" step {self.step:g}" if self.step else "") + (" log" if self.log else "")


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind: a condition on [1] is not met by true."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _flow(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else show(value)


def read_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (an exponent, no dot) as a string; read it as the number it is."""
    return float(value) if isinstance(value, str) and _YAML11_FLOAT.match(value) else value


def _numbers(value: Any) -> Any:
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return read_number(value)


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
    kinds = [k for k in spec if k in KINDS]
    for k in spec:
        if k not in KINDS and k not in OPTIONS:
            raise SpaceError(
                path,
                where,
                f"unknown dimension kind {show(k)}{did_you_mean(k, KINDS + OPTIONS)}; "
                f"kinds: {', '.join(KINDS)}; options: {', '.join(OPTIONS)}",
            )
    if len(kinds) != 1:
        got = f"has {len(kinds)} kinds ({', '.join(kinds)})" if kinds else "has no kind"
        raise SpaceError(path, where, f"{got}; give one of: {', '.join(KINDS)}")
    kind = kinds[0]
    when = _parse_when(spec.get("when"), f"{where}.when", path)
    if kind == "choice":
        return Dimension(key, kind, choices=_parse_choices(spec, where, path), when=when, name=name, origin=origin)
    low, high = _parse_bounds(kind, spec[kind], where, path)
    step = _parse_step(kind, spec.get("step"), low, high, where, path)
    log = _parse_log(kind, spec.get("log", False), low, step, where, path)
    return Dimension(key, kind, low, high, step, log, when=when, name=name, origin=origin)


def _parse_choices(spec: dict[str, Any], where: str, path: Path) -> list[Any]:
    choices = _numbers(spec["choice"])
    if not isinstance(choices, list) or not choices:
        raise SpaceError(
            path, where, f"choice is {show(choices)}, but must be a non-empty list of values, e.g. [sum, pcgrad]"
        )
    for option in ("step", "log"):
        if option in spec:
            raise SpaceError(path, f"{where}.{option}", "a choice takes no step or log; those are for ranges")
    for i, c in enumerate(choices):
        if any(_same(c, d) for d in choices[:i]):
            raise SpaceError(path, where, f"choice has {_flow(c)} twice; list each value once")
        bad = non_finite(c)
        if bad is not None:
            inside = f" (at {bad[0]})" if bad[0] else ""
            raise SpaceError(path, where, f"choice {_flow(c)} holds {bad[1]}{inside}, but every number in a "
                                          "choice must be finite (no .inf or .nan)")  # fmt: skip
    return choices


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


def _parse_bounds(kind: str, body: Any, where: str, path: Path) -> tuple[float, float]:
    body = _numbers(body)
    what = "integers" if kind == "int" else "numbers"
    ok = isinstance(body, list) and len(body) == 2
    ok = ok and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in body)
    if ok and kind == "int":
        ok = all(float(b).is_integer() for b in body)
        body = [int(b) for b in body] if ok else body
    if not ok:
        raise SpaceError(path, where, f"{kind} bounds must be two {what} [low, high], got {show(body)}")
    low, high = body
    if not all(math.isfinite(b) for b in body):
        raise SpaceError(path, where, f"{kind} bounds are [{low:g}, {high:g}], but must be finite numbers "
                                      "(no .inf or .nan)")  # fmt: skip
    if not low < high:
        raise SpaceError(
            path,
            where,
            f"{kind} range [{low:g}, {high:g}] is empty: low must be < high (a single value belongs in the run config)",
        )
    if not math.isfinite(high - low):
        raise SpaceError(path, where, f"{kind} range [{low:g}, {high:g}] is too wide: high - low must be a finite "
                                      "number")  # fmt: skip
    if kind == "loguniform" and low <= 0:
        raise SpaceError(
            path,
            where,
            f"loguniform bounds are [{low:g}, {high:g}], but must be > 0 (a log scale "
            "has no 0); use uniform for a range from 0",
        )
    return low, high


def _parse_step(kind: str, step: Any, low: float, high: float, where: str, path: Path) -> float | None:
    step = read_number(step)
    if step is None:
        return None
    if kind == "loguniform":
        raise SpaceError(
            path, f"{where}.step", "loguniform takes no step (Optuna's log scale has none); use uniform with a step"
        )
    integer = kind == "int"
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0 or (
        integer and step % 1
    ):
        need = "an integer >= 1" if integer else "a finite number > 0"
        raise SpaceError(path, f"{where}.step", f"step is {show(step)}, but must be {need}")
    steps = (high - low) / step
    if abs(steps - round(steps)) > 1e-9:
        below, above = low + math.floor(steps) * step, low + math.ceil(steps) * step
        raise SpaceError(
            path,
            f"{where}.step",
            f"{kind} range [{low:g}, {high:g}] is not a whole number of steps "
            f"of {step:g}; end it at {below:g} or {above:g}",
        )
    return int(step) if integer else step


def _parse_log(kind: str, log: Any, low: float, step: float | None, where: str, path: Path) -> bool:
    if not isinstance(log, bool):
        raise SpaceError(path, f"{where}.log", f"log is {show(log)}, but must be true or false")
    if log and kind != "int":
        raise SpaceError(path, f"{where}.log", f"log is for int ranges; a {kind} range on a log scale is loguniform")
    if log and (low < 1 or (step or 1) != 1):
        raise SpaceError(path, f"{where}.log", f"a log int range needs low >= 1 and no step, got low {low:g}")
    return log


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
        values = _numbers(values)
        if not isinstance(values, list) or not values:
            raise SpaceError(
                path,
                f"{where}.{key}",
                f"is {show(values)}, but must be a non-empty list of the "
                f"values that turn the dimension on, e.g. [{show(values)}]",
            )
        when[str(key)] = values
    return when


# ---- conditions --------------------------------------------------------------------------------


def order(dims: list[Dimension], path: Path) -> list[Dimension]:
    """Check every condition and the alternatives, and sort so conditions come first."""
    by_key: dict[str, list[Dimension]] = {}
    for d in dims:
        by_key.setdefault(d.key, []).append(d)
    for d in dims:
        for key, values in d.when.items():
            _check_condition(d, key, values, by_key, path)
    for key, alternatives in by_key.items():
        if len(alternatives) > 1 and not _exclusive(alternatives):
            raise SpaceError(
                path,
                f"{alternatives[0].origin}.{key}",
                f"has {len(alternatives)} alternatives whose "
                "conditions can hold at once; condition each on one shared key with no value in "
                "common, e.g. when: {losses.sts.kind: [mse]} and when: {losses.sts.kind: [ce]}",
            )
    return _topological(dims, by_key, path)


def _check_condition(d: Dimension, key: str, values: list[Any], by_key: dict[str, list[Dimension]], path: Path) -> None:
    where = f"{d.where}.when"
    if key == d.key:
        raise SpaceError(path, where, f"refers to {key}, the dimension itself")
    if key not in by_key:
        raise SpaceError(
            path,
            where,
            f"refers to {key}, which is not in search{did_you_mean(key, by_key)}; "
            "a condition may only refer to a searched dimension",
        )
    for parent in by_key[key]:
        if parent.kind not in ("choice", "int"):
            raise SpaceError(
                path,
                where,
                f"refers to {key}, a {parent.kind} dimension; conditions may only "
                "refer to choice and int dimensions (a value they can hold exactly)",
            )
    for value in values:
        if not any(p.can_take(value) for p in by_key[key]):
            takes = "; ".join(p.describe() for p in by_key[key])
            raise SpaceError(path, f"{where}.{key}", f"has {_flow(value)}, which {key} can never take; it is {takes}")


def _exclusive(alternatives: list[Dimension]) -> bool:
    """Some key every alternative conditions on, with no value shared by two of them."""
    shared = set.intersection(*(set(a.when) for a in alternatives))
    for key in shared:
        lists = [a.when[key] for a in alternatives]
        if all(
            not any(_same(x, y) for x in lists[i] for y in lists[j])
            for i in range(len(lists))
            for j in range(i + 1, len(lists))
        ):
            return True
    return False


def _topological(dims: list[Dimension], by_key: dict[str, list[Dimension]], path: Path) -> list[Dimension]:
    """Kahn's algorithm, keeping the file's order among dimensions that are ready together."""
    parents = {d.name: {p.name for key in d.when for p in by_key[key]} for d in dims}
    done: list[Dimension] = []
    left = list(dims)
    while left:
        ready = [d for d in left if parents[d.name] <= {x.name for x in done}]
        if not ready:
            raise SpaceError(path, f"{left[0].where}.when", f"conditions form a cycle: {_cycle(left, parents)}")
        done.extend(ready)
        left = [d for d in left if d.name not in {r.name for r in ready}]
    return done


def _cycle(left: list[Dimension], parents: dict[str, set[str]]) -> str:
    names = {d.name for d in left}
    trail = [left[0].name]
    while True:
        nxt = min(parents[trail[-1]] & names)  # every name left waits on another one left
        if nxt in trail:
            loop = trail[trail.index(nxt) :] + [nxt]
            return " -> ".join(loop)
        trail.append(nxt)
