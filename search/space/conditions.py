"""A space's conditions (``when:``): each names a searched choice or int dimension and values it
can take; alternatives on one key exclude each other; and the dimensions are ordered so that every
condition is decided before the dimension it guards (Optuna's define-by-run asks in that order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbert.errors import did_you_mean
from search.errors import SpaceError
from search.space.dimensions import Dimension, flow, same


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
        if parent.continuous:
            raise SpaceError(
                path,
                where,
                f"refers to {key}, a {parent.kind} dimension; conditions may only "
                "refer to choice and int dimensions (a value they can hold exactly)",
            )
    for value in values:
        if not any(p.can_take(value) for p in by_key[key]):
            takes = "; ".join(p.describe() for p in by_key[key])
            raise SpaceError(path, f"{where}.{key}", f"has {flow(value)}, which {key} can never take; it is {takes}")


def _exclusive(alternatives: list[Dimension]) -> bool:
    """Some key every alternative conditions on, with no value shared by two of them."""
    shared = set.intersection(*(set(a.when) for a in alternatives))
    for key in shared:
        lists = [a.when[key] for a in alternatives]
        if all(
            not any(same(x, y) for x in lists[i] for y in lists[j])
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
