"""Named plug-ins: one ``Registry`` per kind (samplers, heads, losses, gradient combiners).

    SAMPLERS = Registry("sampling.schedule")

    @SAMPLERS.register("round_robin")
    class RoundRobin: ...

    SAMPLERS.get("round_robn")  # ValueError: unknown sampling.schedule 'round_robn'; choose from: ...
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from mtbert.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, key: str):
        self.key = key  # the dotted config key that names an entry, used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(self.unknown_message(name)) from None

    def unknown_message(self, name: object, named: bool = True) -> str:
        """Why ``name`` is no entry; ``named=False`` leaves out the key, for a message that already names it."""
        return unknown_name(self.key if named else None, name, self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
