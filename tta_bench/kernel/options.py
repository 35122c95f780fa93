"""Option checking (stdlib only): `--set scope.key=value` parsing and type coercion against declared defaults, the
ranges of numbers (every number has an upper bound that fits the machine type it reaches) and the checks of paths
(empty, too long for the OS, symlink loops, names the file system cannot encode), each error naming its option.
"""

from __future__ import annotations

import ast
import math
import numbers
import os
from pathlib import Path
from typing import Any

from tta_bench.kernel.errors import UserError, close_matches

SCOPES = ("method", "stream", "model")

# Upper bounds. A seed reaches torch/numpy as a signed 64-bit C integer; a whole `--set` value may reach one too.
MAX_SEED = 2**63 - 1
MAX_INT = 2**63 - 1
# Counts of images (--limit, stream lengths, pool and calibration sizes, windows): 2^31 - 1, beyond any dataset.
MAX_IMAGES = 2**31 - 1
MAX_BATCH = 2**20  # images in one batch: a million 32x32 float images already take 12 GB
MAX_ROUNDS = 100_000  # passes over a stream's domains
MAX_WORKERS = 256  # DataLoader worker processes (each holds a copy of the dataset object)
MAX_SIDE = 8192  # pixels of a generated image's side (one 8192^2 RGB float image is 800 MB)
MAX_TEXT = 10_000  # characters of a `--set` text value (a path is at most 4,096 bytes)


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
    """`["method.lr=1e-4", "stream.root=/data"]` -> `{"method": {"lr": 1e-4}, "stream": {...}, ...}`.

    A key given twice is refused (which value a run used must not depend on the order of the options); numbers
    must be finite and whole ones fit a signed 64-bit integer (`check_set_value`)."""
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
        if name in out[scope]:
            raise UserError(
                f"--set {key} is given twice ({out[scope][name]!r}, then {value!r}): give each option once, so the "
                "run records the value it used (drop one of the two --set options)."
            )
        out[scope][name] = check_set_value(key, parse_value(value))
    return out


def check_set_value(option: str, value: Any) -> Any:
    """`value` if every number in it is finite and every whole number fits a signed 64-bit integer (the widest
    machine type an option reaches), and text is at most MAX_TEXT characters; else a UserError naming `--set option`.
    """
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (list, tuple, set)) else ()
    for v in items:
        check_set_value(option, v)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise UserError(
            f"--set {option}={value} is out of range: whole numbers must lie within ±(2^63 - 1) (a 64-bit integer), "
            "and the option's own range is smaller still. Pass a smaller number."
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(
            f"--set {option}: the value is {value} (a number beyond ±1.8e308 reads as infinite): options take finite "
            "numbers. Pass a finite number."
        )
    if isinstance(value, complex):
        raise UserError(f"--set {option}={value!r} is a complex number: options take real numbers, text or lists.")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise UserError(
            f"--set {option}: the value is {len(value):,} characters long; options take at most {MAX_TEXT:,} "
            "(a path is at most 4,096 bytes). Pass a shorter value."
        )
    return value


# --- numbers ------------------------------------------------------------------------------------------------------
def check_int(option: str, value: Any, low: int, high: int, what: str = "", none_ok: bool = False) -> int | None:
    """`value` if it is a whole number in [low, high] (None too when `none_ok`); else a UserError naming `option`
    (e.g. "--batch-size" or "stream.length") with the range and `what` the number means."""
    if value is None and none_ok:
        return None
    meaning = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy integers are whole numbers too
        raise UserError(f"{option} takes a whole number{meaning}, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if not low <= value <= high:
        raise UserError(
            f"{option} must be a whole number from {low:,} to {high:,}{meaning}, got {value:,}. Pass a number in "
            "that range."
        )
    return value


def check_float(option: str, value: Any, low: float, high: float, what: str = "", low_open: bool = False) -> float:
    """`value` if it is a finite real number in [low, high] (`low_open`: above `low`); else a UserError naming
    `option`. nan, inf and text are refused (`1e400` on a command line reads as inf)."""
    meaning = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{option} takes a number{meaning}, got {value!r} ({type(value).__name__}).")
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value <= high):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise UserError(
            f"{option} must be a finite number {bound} and <= {high:g}{meaning}, got {value!r}. Pass a number in "
            "that range."
        )
    return float(value)


def env_number(name: str, default: float, low: float, high: float, what: str) -> float:
    """The number in environment variable `name` (unset or empty: `default`), checked like `check_float`."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UserError(
            f"${name}={text!r} is not a number: it sets {what}. Set it to a number from {low:g} to {high:g} "
            f"(e.g. {name}={default:g}), or unset it for the default {default:g}."
        ) from None
    return check_float(f"${name}", value, low, high, what)


# --- paths --------------------------------------------------------------------------------------------------------
def check_path(path: Any, option: str, empty: str = "") -> Path:
    """`path` as a Path when the OS can use it; else a UserError naming `option` (an option like "--out", a
    "--set stream.root" or an environment variable like "$TTA_BENCH_CACHE").

    Refused: an empty string (it would mean the current folder: usually an unset shell variable; `empty` says what
    to pass instead), text with a NUL byte or that the file system's encoding cannot hold, a name longer than the
    file system allows (255 bytes a component, 4,096 a path on Linux), and a symlink loop on the way.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"{option} takes a path, got {path!r} ({type(path).__name__}).")
    text = os.fspath(path)
    if isinstance(text, bytes) or not text.strip():
        raise UserError(
            f"{option} is empty ({text!r}), which would mean the current folder (an unset shell variable?). "
            + (empty or "Pass a path, or leave the option out for its default.")
        )
    if "\0" in text:
        raise UserError(f"{option} {text!r} holds a NUL character, which no path can hold. Pass the path without it.")
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        raise UserError(
            f"{option} {ascii(text)} holds characters this file system's encoding cannot store. Pass a path in "
            "plain characters."
        ) from None
    try:
        p = Path(text).expanduser()
    except RuntimeError:  # "~name/..." of no known user, or "~" without a home folder
        raise UserError(
            f"{option} {_short(raw)}: its leading ~ names no home folder known here. Pass the path without ~."
        ) from None
    absolute = os.fsencode(os.path.abspath(p))
    name_max, path_max = _limits(p)
    longest = max((len(part) for part in absolute.split(b"/")), default=0)
    if longest > name_max or len(absolute) >= path_max:
        which = f"a name of {longest} bytes (at most {name_max})" if longest > name_max else None
        which = which or f"{len(absolute)} bytes in all (at most {path_max - 1})"
        raise UserError(f"{option} {_short(raw)} is too long for this file system: {which}. Pass a shorter path.")
    try:
        p.resolve()
    except (RuntimeError, OSError) as e:  # Python < 3.13: RuntimeError("Symlink loop ..."); later: OSError ELOOP
        raise UserError(
            f"{option} {_short(raw)} cannot be followed: a symbolic link on the way points back to itself ({e}). "
            "Fix or remove the link, or pass another path."
        ) from None
    return p


def _limits(p: Path) -> tuple[int, int]:
    """(longest name, longest path) in bytes on the file system of `p`'s nearest existing folder (255, 4096)."""
    q = Path(os.path.abspath(p))
    for folder in (q, *q.parents):
        try:
            return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
        except (OSError, ValueError, AttributeError):
            continue
    return 255, 4096


def _short(raw: bytes) -> str:
    """A path for a message: escaped where undecodable, its middle elided when long."""
    text = raw.decode("utf-8", "backslashreplace")
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]} ({len(raw)} bytes)"


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
