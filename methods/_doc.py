"""Adapter options for help() and IDEs: a docstring section and a keyword signature generated from `defaults`.

`Adapter.__init_subclass__` calls `document(cls)` for every adapter class: its `__doc__` gains an "Options" section
(one line per declared option: name, default, meaning from `option_docs` merged over the base classes' and
COMMON_OPTION_DOCS, "(undocumented)" where none is given), and `__signature__` becomes
`Cls(model, *, inplace=False, <option>=<default>, ...)`, so `help(Tent)`, `inspect.signature(Tent)` and IDE
completion show the options instead of `**hparams`. `python -m tta_bench list methods -v` prints `option_lines`.
"""

from __future__ import annotations

import inspect
from typing import Any

# Meanings of options many adapters share (the optimizer keys of methods.base.optimizer_defaults and the like).
COMMON_OPTION_DOCS = {
    "optimizer": "optimizer of the adapted parameters: adam, adamw or sgd",
    "lr": "learning rate of the adapted parameters",
    "betas": "Adam/AdamW betas",
    "momentum": "SGD momentum",
    "wd": "weight decay",
    "nesterov": "SGD Nesterov momentum",
    "steps": "optimizer steps per test batch (each on the same batch)",
}
HEADING = "Options (keyword arguments; defaults in `defaults`, official per-benchmark values in `presets`):"
UNDOCUMENTED = "(undocumented)"


def option_docs(cls: type) -> dict[str, str]:
    """{option: meaning} for `cls`: `option_docs` of the class and its bases (nearest wins) over the common ones."""
    docs = dict(COMMON_OPTION_DOCS)
    for base in reversed(cls.__mro__):
        docs.update(base.__dict__.get("option_docs", {}) or {})
    return docs


def option_lines(cls: type) -> list[str]:
    """`name = default  meaning` per declared option of `cls` (in declaration order)."""
    defaults: dict[str, Any] = getattr(cls, "defaults", {}) or {}
    docs = option_docs(cls)
    width = max((len(f"{k} = {v!r}") for k, v in defaults.items()), default=0)
    return [f"{f'{k} = {v!r}':<{width}}  {docs.get(k, UNDOCUMENTED)}" for k, v in defaults.items()]


def document(cls: type) -> None:
    """Append the Options section to `cls.__doc__` and give `cls` a keyword signature of its options."""
    own = cls.__dict__.get("__doc__") or ""
    if HEADING in own:  # already documented (e.g. a class re-created)
        return
    lines = option_lines(cls)
    section = "\n".join([HEADING, *(f"    {line}" for line in lines)]) if lines else "Options: none."
    cls.__doc__ = f"{inspect.cleandoc(own)}\n\n{section}\n" if own else f"{section}\n"
    params = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("inplace", inspect.Parameter.KEYWORD_ONLY, default=False),
        *(
            inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
            for k, v in cls.defaults.items()
            if k.isidentifier() and k not in ("model", "inplace")
        ),
    ]
    cls.__signature__ = inspect.Signature(params)
