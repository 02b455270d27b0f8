"""One small registry class for every kind of variant (paradigms, PEFT methods, strategies, data sources)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from mfpt.core.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, ValueError):
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


def close_names(name: object, available: Iterable[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The names in `available` closest to `name` (difflib ratio >= cutoff), best first: the one suggestion rule."""
    return difflib.get_close_matches(str(name), list(available), n=n, cutoff=cutoff)


def did_you_mean(name: object, available: Iterable[str], n: int = 3, cutoff: float = 0.5, prefix: str = "") -> str:
    """" Did you mean 'a', 'b'?" for the closest names (with `prefix` before each), or "" when none is close."""
    close = close_names(name, available, n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""


def unknown_name_message(kind: str, name: object, available: list[str]) -> str:
    """'Unknown X 'y'. Did you mean ...? Available: ...' (the lm-eval-harness form)."""
    return f"Unknown {kind} {name!r}.{did_you_mean(name, available)} Available: {', '.join(available)}."
