"""Option checking: `--set scope.key=value` parsing and type coercion against declared defaults (stdlib only)."""

from __future__ import annotations

import ast
from typing import Any

from tta_bench.kernel.errors import UserError, close_matches

SCOPES = ("method", "stream", "model")


def parse_value(text: str) -> Any:
    """`--set` value: a Python/JSON literal when it parses as one (1e-4, true, None, [1,2]), else a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["method.lr=1e-4", "stream.root=/data"]` -> `{"method": {"lr": 1e-4}, "stream": {...}, ...}`."""
    out: dict[str, dict[str, Any]] = {s: {} for s in SCOPES}
    for item in items:
        key, sep, value = item.partition("=")
        scope, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UserError(
                f"Bad --set '{item}': expected scope.key=value, e.g. --set method.lr=1e-4 or "
                f"--set stream.root=/path/to/data (scopes: {', '.join(SCOPES)})."
            )
        if scope not in SCOPES:
            raise UserError(f"Bad --set '{item}': unknown scope '{scope}'. Scopes: {', '.join(SCOPES)}.")
        out[scope][name] = parse_value(value)
    return out


def check_options(kind: str, name: str, given: dict[str, Any], declared: dict[str, Any]) -> dict[str, Any]:
    """Type-check `given` against `declared` defaults; return the merged, fully resolved options.

    An int is accepted where a float is declared; a declared `None` accepts anything; a string is
    accepted for Path-like options declared as None or str.
    """
    resolved = dict(declared)
    for key, value in given.items():
        if key not in declared:
            hint = close_matches(key, declared)
            raise UserError(
                f"{kind} '{name}' has no option '{key}'."
                + (f" Did you mean: {', '.join(hint)}?" if hint else "")
                + f" Its options: {', '.join(sorted(declared)) or '(none)'}."
            )
        resolved[key] = coerce(kind, name, key, value, declared[key])
    return resolved


def coerce(kind: str, name: str, key: str, value: Any, default: Any) -> Any:
    """`value` converted to the type of `default` (int -> float, list <-> tuple), or a UserError naming the option."""
    if default is None or value is None:
        return value
    want = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
        value = want(value) if ok else value
        if ok and len(default) and len(value) != len(default) and all(isinstance(v, (int, float)) for v in default):
            raise UserError(
                f"{kind} '{name}' option '{key}' expects {len(default)} numbers (default {default!r}), got {value!r}. "
                f"Example: --set {kind}.{key}={list(default)!r}."
            )
    else:
        ok = isinstance(value, want)
    if not ok:
        raise UserError(
            f"{kind} '{name}' option '{key}' expects {want.__name__} (default {default!r}), "
            f"got {value!r} ({type(value).__name__}). Example: --set {kind}.{key}={default!r}."
        )
    return value
