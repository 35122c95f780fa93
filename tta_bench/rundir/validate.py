"""Validating a whole run folder: the leaderboard reads nothing it has not checked (types of every key it reads,
ranges, agreement between the files). A damaged, hostile or half-written folder is a UserError naming the file."""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Required, TypedDict, Union

from tta_bench.kernel import UserError, untrusted
from tta_bench.rundir.schema import (
    BATCHES,
    CONFIG,
    DAMAGED,
    DOMAIN_COLUMNS,
    DOMAINS,
    MAX_DOMAINS,
    MAX_FILE_BYTES,
    MAX_NAME,
    RUN_ID_LENGTH,
    SUMMARY,
    SUMMARY_KEYS,
    Summary,
    is_run_id,
    load_config,
    load_summary,
    matches,
)


class Identity(TypedDict):
    """config.json `config`: the resolved options a run id is the hash of (the part the leaderboard reads)."""

    method: str
    stream: str
    model: str
    setting: str
    severity: int
    batch_size: int
    seed: int
    limit: int | None
    rounds: int
    precision: str
    clean_eval: str
    method_opts: dict[str, Any]
    stream_opts: dict[str, Any]


class DomainEntry(TypedDict, total=False):
    """One entry of config.json `domain_order`: a segment of the stream, in order."""

    round: Required[int]
    domain: Required[str]
    severity: int | None
    reset: bool
    order: str
    parts: list[list[str | int | None]]


class Execution(TypedDict, total=False):
    """config.json `execution`: how the run was executed (not part of the run id; other keys free)."""

    device: str | None
    data_dir: str | None
    out: str | None


class Git(TypedDict, total=False):
    commit: str | None
    dirty: bool | None


class Config(TypedDict, total=False):
    """config.json: the keys the leaderboard reads and their types (the runner writes more; those are free)."""

    run_id: Required[str]
    config: Required[Identity]
    execution: Execution
    versions: dict[str, str | None]
    git: Git
    data_fingerprint: Any
    task: str | None
    domain_order: list[DomainEntry]
    samples_per_domain: dict[str, int]


# CSV column kinds: "int", "number" (finite), "text" (non-empty); "?" = may be empty. Columns a file must hold are
# REQUIRED_*; any other column is a number or empty (task metrics such as ece, miou, iou_<class>).
BATCH_TYPES = {"batch": "int", "round": "int", "segment": "text", "index": "int", "severity": "int?", "n": "int",
               "error": "number", "nonfinite": "int", "seconds": "number?", "adapt_mb": "number?",
               "peak_device_mb": "number?"}  # fmt: skip
DOMAIN_TYPES = {"round": "int", "segment": "text", "domain": "text", "severity": "int?", "error": "number",
                "n": "int", "clean_error": "number?", "seconds": "number?", "images_per_s": "number?"}  # fmt: skip
REQUIRED_BATCH = ("batch", "round", "segment", "n", "error")
REQUIRED_DOMAIN = DOMAIN_COLUMNS
# summary.json numbers in percent (errors; forgetting is a difference of two) and numbers that are never negative
PERCENT_KEYS = ("mean_error", "ece", "clean_error_before", "clean_error_after", "worst_window_error",
                "collapse_threshold", "domain_errors", "round_errors", "window_errors")  # fmt: skip
NON_NEGATIVE = ("n_samples", "adapt_mb", "peak_device_mb", "images_per_s", "stream_seconds", "prepare_s",
                "prepare_adapt_mb", "batches_adapted", "window", "batch_size", "rounds")  # fmt: skip
SUMMARY_EXTRA = re.compile(r"[a-z][a-z0-9_]{0,63}")  # extra summary keys (task metrics) are plain identifiers


def _damaged(path: Path, what: str) -> UserError:
    return UserError(f"{path} {what}. {DAMAGED}")


def _mismatch(value: Any, hint: Any, where: str) -> str | None:
    """Where `value` first departs from type `hint` (`where` = its path, e.g. `config.seed`), or None."""
    if typing.is_typeddict(hint):
        if not isinstance(value, dict):
            return f"{where} is {type(value).__name__}, not an object"
        hints = typing.get_type_hints(hint)
        missing = [k for k in hint.__required_keys__ if k not in value]
        if missing:
            return f"{where} lacks {', '.join(missing)}"
        for k, h in hints.items():
            inner = f"{where}.{k}" if where != "top level" else k
            if k in value and (m := _mismatch(value[k], h, inner)):
                return m
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict and isinstance(value, dict):
        return next((m for k, v in value.items() if (m := _mismatch(v, args[1], f"{where}.{k}"))), None)
    if origin is list and isinstance(value, list):
        return next((m for i, v in enumerate(value) if (m := _mismatch(v, args[0], f"{where}[{i}]"))), None)
    if origin in (Union, types.UnionType) and any(_mismatch(value, a, where) is None for a in args):
        return None
    if origin in (dict, list, Union, types.UnionType) or not matches(value, hint):
        return f"{where}={json.dumps(value)[:40]} is not {_type_name(hint)}"
    if isinstance(value, str) and len(value) > MAX_NAME and where.startswith("config."):
        return f"{where} is {len(value)} characters long (at most {MAX_NAME})"
    return None


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (dict, list):
        return "an object" if origin is dict else "a list"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    names = {str: "text", int: "an integer", float: "a number", bool: "true/false", type(None): "null"}
    return names.get(hint, str(hint))


def check_config(cfg: Any, where: str = "config.json") -> dict[str, Any]:
    """`cfg` if it is a valid config.json (`Config`: a hex run id, the identity options and the keys the leaderboard
    reads, each of its type), else a UserError naming `where` and the first key that is wrong."""
    wrong = _mismatch(cfg, Config, "top level")
    if wrong is None and not is_run_id(cfg["run_id"]):
        wrong = f"run_id {json.dumps(cfg['run_id'])[:40]} is not {RUN_ID_LENGTH} lowercase hex characters"
    if wrong is None and any(v < 0 for v in cfg.get("samples_per_domain", {}).values()):
        wrong = "samples_per_domain holds a negative count"
    if wrong is not None:
        raise _damaged(Path(where), f"is not a valid run config ({wrong})")
    return cfg


def _check_numbers(s: dict[str, Any], where: str) -> None:
    """summary.json's numbers in range: percentages in [0, 100] (forgetting in [-100, 100]), sizes >= 0."""
    eps = 1e-6
    for k in PERCENT_KEYS:
        v = s.get(k)
        vals = v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v]
        bad = [x for x in vals if x is not None and not -eps <= x <= 100 + eps]
        if bad:
            raise _damaged(Path(where), f"has {k} = {bad[0]!r:.30}, not a percentage in [0, 100]")
    f = s.get("forgetting")
    if f is not None and not -100 - eps <= f <= 100 + eps:
        raise _damaged(Path(where), f"has forgetting = {f!r:.30}, outside [-100, 100] percentage points")
    bad_keys = [k for k in NON_NEGATIVE if isinstance(s.get(k), (int, float)) and s[k] < 0]
    if bad_keys:
        raise _damaged(Path(where), f"has a negative {bad_keys[0]}")
    extra = [k for k in s if k not in SUMMARY_KEYS and not SUMMARY_EXTRA.fullmatch(k)]
    if extra:
        raise _damaged(Path(where), f"has the key {json.dumps(extra[0])[:40]}, not a lowercase identifier")


def check_run(folder: Path) -> tuple[dict[str, Any], Summary, tuple[list[str], list[list[Any]]], tuple]:
    """Validate a complete run folder against this schema: (config, summary, domains.csv, batches.csv), the CSVs as
    (header, rows) of converted cells (`tta_bench.kernel.untrusted.read_csv`). Raises UserError naming the file and
    what is wrong; nothing it returns can surprise a reader (types, sizes, depth, encodings, non-finite numbers,
    duplicate rows, inconsistent files)."""
    folder = Path(folder)
    cfg = check_config(load_config(folder), str(folder / CONFIG))
    summary = load_summary(folder)
    _check_numbers(dict(summary), str(folder / SUMMARY))
    c = cfg["config"]
    differ = [k for k in ("method", "stream", "model", "setting", "seed") if summary[k] != c[k]]
    if differ:
        raise _damaged(folder / SUMMARY, f"disagrees with config.json on {', '.join(differ)}")
    domains = untrusted.read_csv(folder / DOMAINS, DOMAIN_TYPES, REQUIRED_DOMAIN, MAX_FILE_BYTES, DAMAGED)
    batches = untrusted.read_csv(folder / BATCHES, BATCH_TYPES, REQUIRED_BATCH, MAX_FILE_BYTES, DAMAGED)
    h = domains[0]
    if max(len(summary["domain_errors"]), len({r[h.index("domain")] for r in domains[1]})) > MAX_DOMAINS:
        raise _damaged(folder, f"holds more than {MAX_DOMAINS:,} domains (each would be a column of the tables)")
    keys = [(r[h.index("round")], r[h.index("segment")], r[h.index("domain")]) for r in domains[1]]
    if len(set(keys)) != len(keys):
        raise _damaged(folder / DOMAINS, "repeats a (round, segment, domain) row")
    numbers = [r[batches[0].index("batch")] for r in batches[1]]
    if numbers != list(range(len(numbers))):
        raise _damaged(folder / BATCHES, "does not number its batches 0, 1, 2, ... in order")
    for name, (header, rows) in ((DOMAINS, domains), (BATCHES, batches)):
        for col in ("error", *(k for k in header if k in ("clean_error",))):
            j = header.index(col)
            if any(r[j] is not None and not 0 <= r[j] <= 100 for r in rows):
                raise _damaged(folder / name, f"has `{col}` outside [0, 100] %")
    return cfg, summary, domains, batches
