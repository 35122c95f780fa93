"""RunConfig: the frozen description of one run; its hash names the run folder.

Only fields that change the numbers enter the hash (not the device, output folder, data location or
worker count), so the same experiment run twice, or on another machine, lands in the same folder.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tta_bench.errors import UserError, close_matches

SETTINGS = ("continual", "episodic", "gradual", "mixed", "non-iid")
PRECISIONS = ("fp32", "amp")
SCOPES = ("method", "stream", "model")
CLEAN_EVAL = ("domain", "end", "off")
# Fields that say where/how a run executes, not what it computes: excluded from the hash.
_EXECUTION_FIELDS = ("device", "data_dir", "out", "workers")


def data_dir_default() -> Path:
    """`$TTA_BENCH_DATA` or `~/.cache/tta_bench/data`: where streams look for datasets."""
    return Path(os.environ.get("TTA_BENCH_DATA", Path.home() / ".cache" / "tta_bench" / "data"))


def weights_dir_default() -> Path:
    """`$TTA_BENCH_WEIGHTS` or `~/.cache/tta_bench/weights`: downloaded / placed model weights."""
    return Path(os.environ.get("TTA_BENCH_WEIGHTS", Path.home() / ".cache" / "tta_bench" / "weights"))


def cache_dir_default() -> Path:
    """`$TTA_BENCH_CACHE` or `~/.cache/tta_bench/cache`: trained source models, warm-ups, prepares."""
    return Path(os.environ.get("TTA_BENCH_CACHE", Path.home() / ".cache" / "tta_bench" / "cache"))


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Option dicts hold `--set scope.key=value` overrides."""

    method: str
    stream: str
    model: str | None = None  # None: the stream's default model
    setting: str = "continual"
    severity: int = 5
    batch_size: int = 64
    seed: int = 0
    limit: int | None = None  # samples per domain (None: all)
    rounds: int = 1
    precision: str = "fp32"
    clean_eval: str = "domain"  # forgetting: clean error after every domain | only at the end | off
    method_opts: dict[str, Any] = field(default_factory=dict)
    stream_opts: dict[str, Any] = field(default_factory=dict)
    model_opts: dict[str, Any] = field(default_factory=dict)
    # execution details (not hashed)
    device: str = "auto"
    data_dir: str | None = None
    out: str = "runs"
    workers: int = 0

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise UserError(f"Unknown setting '{self.setting}'. Choose one of: {', '.join(SETTINGS)} (--setting).")
        if self.precision not in PRECISIONS:
            raise UserError(f"Unknown precision '{self.precision}'. Choose fp32 or amp (--precision).")
        if self.clean_eval not in CLEAN_EVAL:
            raise UserError(f"--clean-eval must be one of {', '.join(CLEAN_EVAL)}, got '{self.clean_eval}'.")
        if not 1 <= self.severity <= 5:
            raise UserError(f"Severity must be 1..5, got {self.severity} (--severity).")
        for name in ("batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be a positive number of samples per domain, got {self.limit}.")

    def identity(self) -> dict[str, Any]:
        """The hashed part of the config, JSON-ready."""
        d = asdict(self)
        for k in _EXECUTION_FIELDS:
            d.pop(k)
        return d

    def run_id(self) -> str:
        """Short stable hash of the resolved `identity()` (every default filled in): the run folder's name.

        Resolving first means `RunConfig(method="tent", stream="digits-c")` and the same config with Tent's
        default lr spelled out name the same folder.
        """
        from tta_bench.runner import resolve  # lazy: resolving loads the registries

        blob = json.dumps(resolve(self).identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def folder(self) -> Path:
        return Path(self.out) / self.run_id()

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else data_dir_default()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def parse_value(text: str) -> Any:
    """`--set` value: a Python/JSON literal when it parses as one (1e-4, true, None, [1,2]), else a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
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
    else:
        ok = isinstance(value, want)
    if not ok:
        raise UserError(
            f"{kind} '{name}' option '{key}' expects {want.__name__} (default {default!r}), "
            f"got {value!r} ({type(value).__name__}). Example: --set {kind}.{key}={default!r}."
        )
    return value
