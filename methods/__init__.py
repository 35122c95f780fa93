"""Test-time adapters, one file each, registered by name.

Library use::

    from tta_bench.methods import Tent
    adapted = Tent(model, lr=1e-3)      # a drop-in model: adapts on every forward
    logits = adapted(x)

    from tta_bench import methods
    adapted = methods.create("tent", model, lr=1e-3)
    methods.names()                     # every registered adapter

Adding an adapter: one new file `methods/<name>.py` with a subclass of `tta_bench.methods.base.Adapter` decorated
with `@register("<name>")`. Nothing else: every public module of this package is imported on the first lookup or
listing (the kernel Registry's `packages`), and its classes are importable by name (`from tta_bench.methods import
<Class>`, resolved through `__getattr__` below). Modules whose names start with `_` are helpers, never loaded
for registration.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from tta_bench.kernel import Registry
from tta_bench.methods.base import Adapter

METHODS = Registry("method", "python -m tta_bench list methods", packages=(__name__,))


def register(name: str):
    """Class decorator: register an Adapter subclass under `name` (and set `cls.name`)."""

    def deco(cls: type[Adapter]) -> type[Adapter]:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return deco


def create(name: str, model: nn.Module, **hparams: Any) -> Adapter:
    """Wrap `model` in the adapter registered as `name`, with hyper-parameter overrides."""
    return METHODS.get(name).factory(model, **hparams)


def names() -> list[str]:
    return METHODS.names()


def get(name: str) -> type[Adapter]:
    return METHODS.get(name).factory


def classes() -> dict[str, type[Adapter]]:
    """Every registered adapter class by its class name (`{"Tent": Tent, ...}`)."""
    return {e.factory.__name__: e.factory for e in METHODS.items()}


def __getattr__(name: str) -> type[Adapter]:
    """`from tta_bench.methods import Tent`: a registered adapter class by its class name (loads the modules)."""
    if name.startswith("__"):
        raise AttributeError(name)
    found = classes().get(name)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return found


def __dir__() -> list[str]:
    return sorted([*globals(), *classes()])
