"""One small registry (name -> factory) used for methods, streams and models.

Duplicate names are rejected; an unknown name raises a `UserError` that lists close matches.
Each entry carries a one-line description (first docstring line unless given) for `list` commands.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tta_bench.kernel.errors import unknown_name


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str


class Registry:
    """Maps names to factories. `kind` names what is registered ("method", "stream", "model")."""

    def __init__(self, kind: str, list_cmd: str | None = None) -> None:
        self.kind = kind
        self.list_cmd = list_cmd
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[Callable], Callable]:
        """Decorator: `@REG.register("tent")` on a class or function."""

        def deco(factory: Callable) -> Callable:
            self.add(name, factory, description)
            return factory

        return deco

    def add(self, name: str, factory: Callable, description: str | None = None) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} '{name}' is registered twice ({self._entries[name].factory!r}).")
        if description is None:
            doc = inspect.getdoc(factory) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, factory, description)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries, self.list_cmd) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


def declared_options(factory: Callable) -> dict[str, Any]:
    """Keyword-only parameters of `factory` with their defaults: the options a user may `--set`."""
    sig = inspect.signature(factory)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
