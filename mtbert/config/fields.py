"""The config's building blocks: ``ConfigError`` and the per-field rules a dataclass field carries
(``check(default, rule)``); a rule returns the constraint a value breaks, or None.

Imports nothing of the project but ``mtbert.errors``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Callable

from mtbert import errors


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


def optional_fraction(v: float | None) -> str | None:
    return None if v is None or 0 < v < 1 else "must be a fraction in (0, 1), or null"


def in_range(lo: float, hi: float, hi_open: bool = False) -> Callable[[float], str | None]:
    def rule(v: float) -> str | None:
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"must be in [{lo}, {hi}{')' if hi_open else ']'}"

    return rule


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        return None if v in choices else errors.one_of(choices)

    return rule


def positive_list(v: list[int]) -> str | None:
    return None if all(x > 0 for x in v) else "every size must be > 0"


def known_features(v: list[str]) -> str | None:
    allowed = ("u", "v", "diff", "prod")
    if not v or any(f not in allowed for f in v):
        return f"must be a non-empty list of: {', '.join(allowed)}"
    return None
