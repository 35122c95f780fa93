"""User-facing errors: one paragraph saying what is wrong and how to fix it.

The CLI prints a `UserError` without a traceback and exits with code 2. Library users get an ordinary
exception (it subclasses ValueError) with the same message.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user (unknown name, bad option, missing data); exit code 2 in the CLI."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Names in `choices` that look like `name` (difflib ratio >= 0.5, plus prefix/substring hits)."""
    choices = list(choices)
    hits = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    for c in choices:
        if len(hits) >= n:
            break
        if c not in hits and (name.lower() in c.lower() or c.lower().startswith(name.lower()[:3])):
            hits.append(c)
    return hits


def unknown_name(kind: str, name: str, choices: Iterable[str], list_cmd: str | None = None) -> UserError:
    """A UserError for an unknown `kind` (method, stream, ...) that lists close matches."""
    choices = sorted(choices)
    hits = close_matches(name, choices)
    msg = f"Unknown {kind} '{name}'."
    if hits:
        msg += " Did you mean: " + ", ".join(hits) + "?"
    msg += " Known: " + ", ".join(choices) + "."
    if list_cmd:
        msg += f" See `{list_cmd}` for descriptions."
    return UserError(msg)
