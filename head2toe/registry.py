"""One registry type for everything a user picks by name (tasks, backbones, methods), after
timm's `_registry.py`: a read-only mapping whose failed lookup is the project's one error
line, `unknown <kind> 'x' (did you mean 'y'?); choose one of: a, b, c`."""
from __future__ import annotations

import difflib
from typing import Generic, Iterable, Iterator, Mapping, TypeVar

from head2toe.errors import H2TError

T = TypeVar("T")


class UnknownName(H2TError, KeyError):
    """A name no registry holds. A KeyError too, so the registry is a plain Mapping."""

    __str__ = BaseException.__str__  # KeyError's would quote the whole line


def unknown(kind: str, name: object, choices: Iterable[str], hint: str = "") -> UnknownName:
    """The error for `name` not among `choices`, with the closest choice when one is close."""
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=1)
    maybe = f" (did you mean {close[0]!r}?)" if close else ""
    return UnknownName(f"unknown {kind} {name!r}{maybe}; choose one of: {', '.join(choices)}{hint}")


def check_choice(kind: str, value: str, choices: Iterable[str], hint: str = "") -> str:
    """`value` when it is one of `choices`, else the one-line error."""
    choices = list(choices)
    if value not in choices:
        raise unknown(kind, value, choices, hint)
    return value


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind, in registration order. `hint` ends the error line (where
    else to look, e.g. "(see `h2t tasks`)")."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def unknown(self, name: object, also: Iterable[str] = ()) -> UnknownName:
        """The error for a name this registry (and `also`, names of a neighbour) lacks."""
        return unknown(self.kind, name, [*self._entries, *also], self.hint)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
