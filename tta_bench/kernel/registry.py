"""One small registry (name -> factory) used for methods, streams, models and corruptions.

Duplicate names are rejected; an unknown name raises a `UserError` that lists close matches.
Each entry carries a one-line description (first docstring line unless given) for `list` commands, and
optional attributes (e.g. a corruption's `native_gray`).

A registry may name the `packages` whose modules register into it (`Registry("model", packages=("tta_bench.zoo",))`):
every public module of those packages is imported before the first lookup or listing, so no caller has to
remember to import them first. A module that registers into the registry it is loading may look entries up
while it loads (it sees those registered so far).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tta_bench.kernel.errors import unknown_name


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    attrs: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """Maps names to factories. `kind` names what is registered ("method", "stream", "model", "corruption")."""

    def __init__(self, kind: str, list_cmd: str | None = None, packages: Sequence[str] = ()) -> None:
        self.kind = kind
        self.list_cmd = list_cmd
        self.packages = tuple(packages)
        self._entries: dict[str, Entry] = {}
        self._loaded = not self.packages

    def load(self) -> None:
        """Import every module of `packages` whose name does not start with "_" (once; they register on import)."""
        if self._loaded:
            return
        self._loaded = True  # set first: the modules look entries up while they load
        try:
            for package in self.packages:
                pkg = importlib.import_module(package)
                for m in pkgutil.iter_modules(pkg.__path__):
                    if not m.name.startswith("_"):
                        importlib.import_module(f"{package}.{m.name}")
        except BaseException:
            self._loaded = False  # a failed import is retried (and raises again) on the next lookup
            raise

    def register(self, name: str, description: str | None = None, **attrs: Any) -> Callable[[Callable], Callable]:
        """Decorator: `@REG.register("tent")` on a class or function."""

        def deco(factory: Callable) -> Callable:
            self.add(name, factory, description, **attrs)
            return factory

        return deco

    def add(self, name: str, factory: Callable, description: str | None = None, **attrs: Any) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} '{name}' is registered twice ({self._entries[name].factory!r}).")
        if description is None:
            doc = inspect.getdoc(factory) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, factory, description, dict(attrs))

    def get(self, name: str) -> Entry:
        self.load()
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries, self.list_cmd) from None

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def names(self) -> list[str]:
        self.load()
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
