"""One small registry class for every kind of variant (paradigms, PEFT methods, strategies, data sources)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that no registry entry has; the message lists what exists."""


class Registry(Generic[T]):
    """Maps a name to an implementation; refuses duplicates and explains unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers `obj` under `name`."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name.")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry for `name`, or an UnknownNameError that suggests the closest names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


def unknown_name_message(kind: str, name: object, available: list[str]) -> str:
    """'Unknown X 'y'. Did you mean ...? Available: ...' (the lm-eval-harness form)."""
    close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Available: {', '.join(available)}."
