"""The checks of a space's dimensions against the run config, made before anything starts so that
a trial never meets a ``ConfigError``: each search key names a run setting, a ratio is on a grid,
and every dimension's extreme values (and those of each pair of choice and int dimensions) give a
valid run (``check_dimensions``, which also finds the longest trial).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtbert.config import ConfigError, RunConfig, evaluations, total_steps
from search.errors import SpaceError
from search.space.dimensions import KINDS, Dimension, flow
from search.space.values import apply, run_key_problem


def check_search_key(key: str, spec: Any, where: str, path: Path) -> None:
    problem = run_key_problem(key)
    if problem:
        raise SpaceError(path, where, f"{problem}; search keys are dotted run settings such as optim.lr")
    if isinstance(spec, dict) and spec and not any(k in KINDS for k in spec):
        inner = f"{key}.{next(iter(spec))}"
        if run_key_problem(inner) is None:
            raise SpaceError(
                path,
                where,
                f"is a section; key each dimension by its dotted setting, e.g. {inner}: {{uniform: [0.1, 0.5]}}",
            )


def check_ratio_grid(dims: list[Dimension], path: Path) -> None:
    """Ratios schedule: ratio * batch_size examples of a task per step must be a whole number,
    which a continuous range almost never gives (the run would fail when it starts)."""
    for d in dims:
        if d.key.startswith("sampling.ratios.") and d.continuous and not d.step:
            raise SpaceError(
                path,
                d.where,
                f"is {d.describe()}, but ratio * sampling.batch_size must be a whole "
                "number of examples; use {int: [0, 3]}, a choice, or a uniform step "
                "such as 1/batch_size",
            )


# ---- checking the dimensions against the run config --------------------------------------------


class _Checker:
    """Apply each dimension's extreme values, and each pair's (choice and int dimensions), to the
    base and validate the run.

    Every check starts from the default point (each active dimension at its first choice or low
    end); the dimensions a value depends on are set so that its conditions hold, and those it
    switches on take their defaults. It also records the longest trial (evaluations, steps)."""

    def __init__(self, path: Path, base: RunConfig, dims: list[Dimension]):
        self.path, self.base, self.dims = path, base, dims
        self.by_name = {d.name: d for d in dims}
        self.by_key: dict[str, list[Dimension]] = {}
        for d in dims:
            self.by_key.setdefault(d.key, []).append(d)
        self.seen: set[str] = set()
        self.lengths: dict[str, tuple[int, int]] = {}
        self.max_evals = self.max_steps = 0

    def run(self) -> None:
        self.check({})
        for d in self.dims:
            for v in d.values():
                self.check({d.name: v})
        for i, a in enumerate(self.dims):
            for b in self.dims[i + 1 :]:
                if a.key == b.key or a.continuous or b.continuous:
                    continue  # no run check relates a continuous setting to another setting
                for va in a.values():
                    for vb in b.values():
                        self.check({a.name: va, b.name: vb})

    def check(self, fixed: dict[str, Any]) -> None:
        wanted: dict[str, Any] = {}
        for name, value in fixed.items():
            wanted.update(self.activation(self.by_name[name], value))
        wanted.update(fixed)
        chosen = self.point(wanted)
        got = {d.name: v for d, v in chosen}
        if any(n not in got or got[n] != v for n, v in fixed.items()):
            if len(fixed) == 1:
                name, value = next(iter(fixed.items()))
                d = self.by_name[name]
                raise SpaceError(
                    self.path,
                    d.where,
                    f"{d.value_text(value)} can never be used: its conditions cannot all hold at once",
                )
            return  # these two values never meet in one trial
        signature = json.dumps([(d.name, v) for d, v in chosen], default=str)
        if signature in self.seen:
            return
        self.seen.add(signature)
        try:
            config = apply(self.base, chosen)
        except ConfigError as e:
            raise self.problem(fixed, wanted, e) from None
        self.record(config)

    def activation(self, d: Dimension, value: Any) -> dict[str, Any]:
        """Values of the dimensions ``d`` depends on (recursively) that make its conditions hold."""
        wanted = {d.name: value}
        todo = [d]
        while todo:
            for key, values in todo.pop().when.items():
                if any(alt.name in wanted for alt in self.by_key[key]):
                    continue
                for alt in self.by_key[key]:
                    fit = [v for v in values if alt.can_take(v)]
                    if fit:
                        wanted[alt.name] = fit[0]
                        todo.append(alt)
                        break
        return wanted

    def point(self, wanted: dict[str, Any]) -> list[tuple[Dimension, Any]]:
        values: dict[str, Any] = {}
        chosen = []
        for d in self.dims:
            if d.key in values or not d.active(values):
                continue
            values[d.key] = wanted[d.name] if d.name in wanted else d.default()
            chosen.append((d, values[d.key]))
        return chosen

    def problem(self, fixed: dict[str, Any], wanted: dict[str, Any], e: ConfigError) -> SpaceError:
        """The error under the dimension the failing key belongs to (or the first one checked)."""

        def closeness(name: str) -> int:  # the failing key itself, then a key under it, then above it
            key = self.by_name[name].key
            return 0 if key == e.key else 1 if key.startswith(e.key + ".") else 2 if e.key.startswith(key + ".") else 3

        candidates = list(dict.fromkeys([*fixed, *wanted, *(d.name for d, _ in self.point(wanted))]))
        ranked = sorted(candidates, key=closeness)  # stable: the values being checked come first among equals
        blame = ranked[0] if ranked and closeness(ranked[0]) < 3 else next(iter(fixed), None)
        if blame is None:
            return SpaceError(self.path, "search", f"{e.key}: {e.message}")
        d = self.by_name[blame]
        value = wanted.get(blame, d.default())
        shown = {**{x.name: v for x, v in self.point(wanted) if e.key.startswith(x.key + ".")}, **wanted}
        context = [f"{self.by_name[n].key}={flow(v)}" for n, v in shown.items() if n != blame]
        what = d.value_text(value) + (f" (with {', '.join(context)})" if context else "")
        return SpaceError(
            self.path, d.where, f"{what}: {e.message}" if e.key == d.key else f"{what}: {e.key}: {e.message}"
        )

    def record(self, config: RunConfig) -> None:
        shape = json.dumps(
            [config.train.max_steps, config.train.eval_every, [vars(p) for p in config.phases]], default=str
        )
        if shape not in self.lengths:
            self.lengths[shape] = (evaluations(config), total_steps(config))
        evals, steps = self.lengths[shape]
        self.max_evals, self.max_steps = max(self.max_evals, evals), max(self.max_steps, steps)


def check_dimensions(path: Path, base: RunConfig, dims: list[Dimension]) -> tuple[int, int]:
    """Raise ``SpaceError`` for the first value that makes an invalid run; return the longest
    trial's evaluations and steps."""
    checker = _Checker(path, base, dims)
    checker.run()
    return checker.max_evals, checker.max_steps
