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
identical run waits for the first and then finds its result. `clean_stale` removes what interrupted runs of
an id left behind (called under the lock).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import signal
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Union

from tta_bench.kernel import UserError, is_hex_id, read_json, write_atomic, write_json

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
    return check_summary(read_json(path, "run summary"), str(path))


def load_config(folder: Path) -> dict[str, Any]:
    """config.json of `folder`, checked to be an object whose `run_id` is a valid run id."""
    path = Path(folder) / CONFIG
    cfg = read_json(path, "run config")
    if not isinstance(cfg, dict) or not is_run_id(cfg.get("run_id")) or not isinstance(cfg.get("config"), dict):
        raise UserError(
            f"{path} is not a run config (needs a hex `run_id` of {RUN_ID_LENGTH} characters and a `config` object)."
        )
    return cfg


# --- writing: kill points for crash tests ----------------------------------------------------------------
_KILL = {"count": 0}
KILL_ENV = "TTA_BENCH_TEST_KILL_AT"
SLOW_ENV = "TTA_BENCH_TEST_SLOW_WRITES"
HOLD_ENV = "TTA_BENCH_TEST_HOLD_WHILE"


def kill_point() -> None:
    """Count a write step; SIGKILL this process at step `$TTA_BENCH_TEST_KILL_AT`; before each step sleep
    `$TTA_BENCH_TEST_SLOW_WRITES` seconds and wait while the file `$TTA_BENCH_TEST_HOLD_WHILE` exists
    (crash and concurrency tests only)."""
    _KILL["count"] += 1
    at, slow, hold = os.environ.get(KILL_ENV), os.environ.get(SLOW_ENV), os.environ.get(HOLD_ENV)
    if at and int(at) == _KILL["count"]:
        os.kill(os.getpid(), signal.SIGKILL)
    if slow:
        time.sleep(float(slow))
    while hold and Path(hold).exists():
        time.sleep(0.05)


def write_file(path: Path, data: str | bytes) -> None:
    """Atomic write of one run file (a kill point before it)."""
    kill_point()
    write_atomic(path, data)


def write_json_file(path: Path, obj: Any) -> None:
    """Atomic strict-JSON write of one run file (NaN/inf -> null; a kill point before it)."""
    kill_point()
    write_json(path, obj)


# --- temporary folders, locking, commit -----------------------------------------------------------------
def temp_folder(out: Path, run_id: str) -> Path:
    """A new private folder `<out>/.<run id>.tmp-<pid>-<random>/` to build a run in."""
    assert is_run_id(run_id), run_id
    path = Path(out) / f".{run_id}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    return path


@contextmanager
def run_lock(out: Path, run_id: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock of `run_id` under `out` (waits while another process holds it)."""
    assert is_run_id(run_id), run_id
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / f".{run_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"Cannot write run folders under --out {out} ({e.strerror}). Pass a writable --out.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out: Path, run_id: str, kind: str) -> list[Path]:
    return sorted(Path(out).glob(f".{run_id}.{kind}-*"))


def recover(out: Path, run_id: str) -> Path | None:
    """The complete folder of `run_id`: `<out>/<id>`, or an old one set aside by an interrupted commit (moved back)."""
    final = Path(out) / run_id
    if is_complete(final):
        return final
    for old in _leftovers(out, run_id, "old"):
        if is_complete(old):
            if final.exists():
                shutil.rmtree(final)  # an incomplete folder (never written by commit): the old result wins
            os.rename(old, final)
            return final
    return None


def find_complete(out: Path, run_id: str) -> Path | None:
    """Where a complete result of `run_id` is, without changing anything (`<out>/<id>` or an old aside)."""
    final = Path(out) / run_id
    if is_complete(final):
        return final
    return next((p for p in _leftovers(out, run_id, "old") if is_complete(p)), None)


def clean_stale(out: Path, run_id: str) -> list[Path]:
    """Under `run_lock(out, run_id)`: recover an aside result, remove this id's temporaries and old folders, and
    any other id's temporary folder whose process is gone. Returns what was removed."""
    recover(out, run_id)
    removed = _leftovers(out, run_id, "tmp") + _leftovers(out, run_id, "old")
    for p in Path(out).glob(".*.tmp-*-*"):
        pid = p.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if p not in removed and p.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            removed.append(p)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, f"renameat2({a}, {b}): {os.strerror(err)}")


def commit(tmp: Path, final: Path) -> None:
    """Make the complete folder `tmp` the folder `final`; an earlier `final` is replaced only now, then deleted."""
    kill_point()
    if not final.exists():
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):  # final: new result; tmp: the old one
        kill_point()
        shutil.rmtree(tmp, ignore_errors=True)
        return
    aside = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(final, aside)
    kill_point()
    os.rename(tmp, final)
    kill_point()
    shutil.rmtree(aside, ignore_errors=True)


def replace_tree(build: Callable[[Path], Any], out: Path) -> Any:
    """Call `build(tmp)` on a new folder beside `out`, then swap it in as `out` (old one deleted after the swap).

    Entries of an existing `out` that `build` did not write are carried over, so only the builder's own
    files are replaced. A crash during `build` leaves `out` untouched.
    """
    out = Path(out)
    for stale in out.parent.glob(f".{out.name}.tmp-*-*"):  # left by a killed build
        pid = stale.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        result = build(tmp)
        if out.is_dir():
            for entry in out.iterdir():
                if not (tmp / entry.name).exists() and not entry.name.startswith(f".{out.name}."):
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
