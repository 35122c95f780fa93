"""The run folder: its one schema and how it is written (stdlib only: the leaderboard imports it without torch).

A run folder `<out>/<run id>/` holds `config.json`, `batches.csv`, `domains.csv`, `summary.json` and `done`
(written last). It is built in a private temporary folder beside it, `<out>/.<run id>.tmp-<pid>-<random>/`,
and swapped in whole by `commit` only when complete, so a reader never sees a half-written result and a
re-run (`--force`) or a crash never loses a completed one:

- with no earlier result, the temporary folder is renamed to `<out>/<run id>` (atomic);
- over an earlier one, the two folders are exchanged atomically (Linux `renameat2(RENAME_EXCHANGE)`) and the
  old one, now at the temporary name, is deleted; where that call is unavailable the old folder is renamed
  aside to `<out>/.<run id>.old-<pid>-<random>/` first, and `find_complete`/`recover` bring it back if a crash
  comes between the two renames.

`run_lock(out, run_id)` (fcntl.flock on `<out>/.<run id>.lock`) serialises runs of one id: a second
identical run waits for the first and then finds its result. `clean_stale` removes what interrupted runs left
behind (called under the lock): only folders whose writer is gone, judged by owner and lease so that runs on
other hosts or in other PID namespaces sharing `--out` keep theirs. The machinery is
`tta_bench.kernel.atomic`'s (also used for the leaderboard site); this module names it for run folders.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Required, TypedDict, Union

from tta_bench.kernel import UserError, atomic, is_hex_id, untrusted, write_atomic, write_json

CONFIG, BATCHES, DOMAINS, SUMMARY, DONE = "config.json", "batches.csv", "domains.csv", "summary.json", "done"
RUN_FILES = (CONFIG, BATCHES, DOMAINS, SUMMARY, DONE)
RUN_ID_LENGTH = 16

Number = int | float


class Summary(TypedDict):
    """summary.json: the keys every run writes and their types (errors in %, memory in MB, None = not measured).

    Streams and tasks add scalar keys of their own (e.g. `miou`, `pixel_acc`, `balanced_error`, `auc`,
    harmonic means); those are allowed beside these. Non-finite numbers are stored as null (strict JSON).
    """

    method: str
    stream: str
    model: str
    setting: str
    seed: int
    severity: int
    rounds: int
    batch_size: int
    task: str
    mean_error: Number | None
    domain_errors: dict[str, Number | None]
    round_errors: list[Number | None]
    ece: Number | None
    n_samples: int
    clean_error_before: Number | None
    clean_error_after: Number | None
    forgetting: Number | None
    adapt_mb: Number | None
    memory: dict[str, Number | None]
    peak_device_mb: Number | None
    images_per_s: Number | None
    stream_seconds: Number
    prepare_s: Number | None
    prepare_adapt_mb: Number | None
    diverged: bool  # some prediction was non-finite (NaN/inf): counted as an error, and the run is marked
    first_diverged_batch: int | None  # index (batches.csv `batch`) of the first such batch
    # long-horizon metrics (tta_bench.protocols.long_horizon): error per `window` images, the worst full window,
    # and `collapsed` when it is within protocols.COLLAPSE_MARGIN pp of chance error (`collapse_threshold`)
    window: int
    window_errors: list[Number | None]
    worst_window: int | None
    worst_window_error: Number | None
    collapse_threshold: Number
    collapsed: bool
    # compute-aware `realistic` setting (tta_bench.protocols.RealisticClock): the relative cost used (None in other
    # settings), whether it was measured on this device, and the batches the method adapted on (all, elsewhere)
    speed_ratio: Number | None
    speed_ratio_measured: bool | None
    batches_adapted: int


SUMMARY_KEYS = tuple(Summary.__annotations__)
# The headline metrics a leaderboard shows and aggregates (all Optional[Number] in Summary).
HEADLINE_METRICS = (
    "mean_error",
    "ece",
    "clean_error_before",
    "clean_error_after",
    "forgetting",
    "adapt_mb",
    "peak_device_mb",
    "images_per_s",
)


# --- what a task is judged by -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A summary.json key shown as a result column: its label, unit and which direction is better."""

    key: str
    label: str
    higher_is_better: bool
    unit: str = "%"
    meaning: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def better(self, a: float, b: float) -> bool:
        """True when value `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b


ERROR = Metric("mean_error", "error", False, meaning="top-1 error (%), mean over domains")
BALANCED_ERROR = Metric("balanced_error", "balanced error", False, meaning="mean per-class error (%) over the stream")
AUC = Metric("auc", "AUC", True, meaning="ROC AUC (%) of the positive class over the stream")
MIOU = Metric("miou", "mIoU", True, meaning="mean intersection over union (%) over the stream's pixels")
HM = Metric("harmonic_mean", "HM", True, meaning="harmonic mean (%) of base and new accuracy")
BASE = Metric("base_acc", "base acc", True, meaning="accuracy (%) on the classes seen in few-shot training")
NEW = Metric("new_acc", "new acc", True, meaning="accuracy (%) on the classes never seen in training")
TARGET = Metric("target_acc", "target acc", True, meaning="accuracy (%), mean over the shifted datasets")
SOURCE = Metric("source_acc", "source acc", True, meaning="accuracy (%) on the source dataset")
# Each task's headline metrics, the first one ranks a table. A stream whose summary adds keys of its own (base-to-new
# CLIP tracks: base/new accuracy and their harmonic mean) is headlined by those instead (STREAM_METRICS, first match).
TASK_METRICS: dict[str, tuple[Metric, ...]] = {
    "classification": (ERROR,),
    "binary": (BALANCED_ERROR, AUC),
    "segmentation": (MIOU,),
}
STREAM_METRICS: tuple[tuple[Metric, ...], ...] = ((HM, BASE, NEW), (TARGET, SOURCE))


def headline(task: str | None, keys: Any = ()) -> tuple[Metric, ...]:
    """The headline metrics of a run of `task` whose summary holds `keys` (first = the one a table ranks by).

    `mean_error` stays available everywhere (it is in every summary); it is only not the headline of tasks that
    declare another one."""
    keys = set(keys)
    for group in STREAM_METRICS:
        if all(m.key in keys for m in group):
            return group
    return TASK_METRICS.get(task or "classification", (ERROR,))


def window_errors(counts: Sequence[int], errors: Sequence[float], window: int) -> list[dict[str, Any]]:
    """Error (%) per consecutive window of `window` images from per-batch sizes and errors (%): summary.json's
    `window_errors`, computed by the runner (`tta_bench.protocols.long_horizon`) and redrawn by the leaderboard.

    Returns rows ``{"window", "start", "n", "error", "first", "last", "full"}``: start is the index of the
    window's first image, first/last the positions of its first and last batch in the sequence, and full whether
    it holds at least half a window (a shorter tail is not judged). A batch is assigned whole to the window its
    first image falls in.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 image, got {window}")
    rows: dict[int, list[float]] = {}
    pos = 0
    for i, (n, err) in enumerate(zip(counts, errors)):
        acc = rows.setdefault(pos // window, [0.0, 0.0, i, i])
        acc[0] += n
        acc[1] += n * err / 100.0
        acc[3] = i
        pos += n
    return [
        {"window": w, "start": w * window, "n": int(n), "error": 100.0 * wrong / n, "first": int(a), "last": int(b),
         "full": n * 2 >= window}
        for w, (n, wrong, a, b) in sorted(rows.items())
        if n > 0
    ]  # fmt: skip


# batches.csv: one row per batch. `nonfinite`: predictions (samples or pixels) with NaN/inf outputs.
BATCH_COLUMNS = (
    "batch",
    "round",
    "segment",
    "index",
    "severity",
    "n",
    "error",
    "nonfinite",
    "seconds",
    "adapt_mb",
    "peak_device_mb",
)
# domains.csv: one row per domain per round; task-specific metric columns (ece, miou, iou_<class>, ...)
# come between `severity` and `clean_error`.
DOMAIN_COLUMNS = ("round", "segment", "domain", "severity", "error", "n", "clean_error", "seconds", "images_per_s")


# --- reading ------------------------------------------------------------------------------------------------
def is_run_id(text: object) -> bool:
    """True for a run id (lowercase hex of RUN_ID_LENGTH characters): the only names used as run file names."""
    return is_hex_id(text, RUN_ID_LENGTH)


def is_complete(folder: Path) -> bool:
    """A folder is a complete run when it holds `done` (written last, inside the temporary folder)."""
    return (Path(folder) / DONE).is_file()


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict) and all(_matches(v, args[1]) for v in value.values())
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_summary(obj: Any, where: str = "summary.json") -> Summary:
    """`obj` if it is a valid summary (every Summary key present with its type), else a UserError naming `where`."""
    if not isinstance(obj, dict):
        raise UserError(f"{where} does not hold a JSON object; the run folder is damaged: delete it and run again.")
    hints = typing.get_type_hints(Summary)
    missing = [k for k in hints if k not in obj]
    wrong = [f"{k}={obj[k]!r}"[:80] for k, h in hints.items() if k in obj and not _matches(obj[k], h)]
    if missing or wrong:
        what = (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and wrong else "")
        raise UserError(
            f"{where} is not a valid run summary ({what}{'wrong type: ' + ', '.join(wrong) if wrong else ''}). "
            "It was damaged or written by an incompatible version: delete the run folder and run again."
        )
    return obj  # type: ignore[return-value]


def load_summary(folder: Path) -> Summary:
    """The validated summary.json of run folder `folder` (UserError on a missing, truncated or invalid file)."""
    path = Path(folder) / SUMMARY
    return check_summary(untrusted.read_json(path, MAX_FILE_BYTES, "run summary", DAMAGED), str(path))


def load_config(folder: Path) -> dict[str, Any]:
    """config.json of `folder`, checked to be an object whose `run_id` is a valid run id."""
    path = Path(folder) / CONFIG
    cfg = untrusted.read_json(path, MAX_FILE_BYTES, "run config", DAMAGED)
    if not isinstance(cfg, dict) or not is_run_id(cfg.get("run_id")) or not isinstance(cfg.get("config"), dict):
        raise UserError(
            f"{path} is not a run config (needs a hex `run_id` of {RUN_ID_LENGTH} characters and a `config` object)."
        )
    return cfg


# --- validating a whole run folder (the leaderboard reads nothing it has not checked) -----------------------
# Every file is read through tta_bench.kernel.untrusted (regular files only, strict JSON at most 32 deep, 64-bit
# integers, typed CSV cells). Limits no real run comes near: a larger file is refused unread.
MAX_FILE_BYTES = 64 << 20
MAX_NAME = untrusted.MAX_TEXT  # characters of a name shown on the page (method, stream, domain, ...)
DAMAGED = "The run folder is damaged or was not written by tta_bench: delete it and run again."
MAX_DOMAINS = 10_000  # distinct domains of a run (each is a column of the leaderboard's tables)


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
    if origin in (dict, list, Union, types.UnionType) or not _matches(value, hint):
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


# --- writing: build aside, lock, swap (tta_bench.kernel.atomic; re-exported here for the runner and the tests) ----
kill_point, commit, replace_tree, is_live = atomic.kill_point, atomic.commit, atomic.replace_tree, atomic.is_live


def write_file(path: Path, data: str | bytes) -> None:
    """Atomic write of one run file (a kill point before it)."""
    kill_point()
    write_atomic(path, data)


def write_json_file(path: Path, obj: Any) -> None:
    """Atomic strict-JSON write of one run file (NaN/inf -> null; a kill point before it)."""
    kill_point()
    write_json(path, obj)


def temp_folder(out: Path, run_id: str) -> Path:
    """A new private folder `<out>/.<run id>.tmp-<pid>-<random>/` to build a run in (owned by this process, its lease
    kept fresh while it runs: `tta_bench.kernel.atomic`)."""
    assert is_run_id(run_id), run_id
    return atomic.make_temp(out, run_id, hint="--out")


def run_lock(out: Path, run_id: str, on_wait: Callable[[], None] | None = None) -> AbstractContextManager[bool]:
    """Hold the exclusive lock of `run_id` under `out` (waits while another process holds it; goes on unlocked, with a
    note, where the file system refuses locks)."""
    assert is_run_id(run_id), run_id
    return atomic.lock(out, run_id, on_wait)


def recover(out: Path, run_id: str) -> Path | None:
    """The complete folder of `run_id`: `<out>/<id>`, or an old one set aside by an interrupted commit (moved back)."""
    return atomic.recover(out, run_id, is_complete)


def find_complete(out: Path, run_id: str) -> Path | None:
    """Where a complete result of `run_id` is, without changing anything (`<out>/<id>` or an old aside)."""
    return atomic.find_complete(out, run_id, is_complete)


def clean_stale(out: Path, run_id: str) -> list[Path]:
    """Under `run_lock(out, run_id)`: recover an aside result, then remove the temporary and old folders under `out`
    whose writer is gone (`atomic.is_live`: a live writer's folder, on this or another host, is kept)."""
    return atomic.clean_stale(out, run_id, is_complete)
