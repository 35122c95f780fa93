"""The run folder's schema: its file names, summary.json's keys and types, the CSV columns, and how one reads them
(stdlib and the kernel only: the leaderboard imports it without torch)."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypedDict, Union

from tta_bench.kernel import UserError, is_hex_id, untrusted

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


# Every file is read through tta_bench.kernel.untrusted (regular files only, strict JSON at most 32 deep, 64-bit
# integers, typed CSV cells). Limits no real run comes near: a larger file is refused unread.
MAX_FILE_BYTES = 64 << 20
MAX_NAME = untrusted.MAX_TEXT  # characters of a name shown on the page (method, stream, domain, ...)
DAMAGED = "The run folder is damaged or was not written by tta_bench: delete it and run again."
MAX_DOMAINS = 10_000  # distinct domains of a run (each is a column of the leaderboard's tables)


# --- reading ------------------------------------------------------------------------------------------------
def is_run_id(text: object) -> bool:
    """True for a run id (lowercase hex of RUN_ID_LENGTH characters): the only names used as run file names."""
    return is_hex_id(text, RUN_ID_LENGTH)


def is_complete(folder: Path) -> bool:
    """A folder is a complete run when it holds `done` (written last, inside the temporary folder)."""
    return (Path(folder) / DONE).is_file()


def matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict) and all(matches(v, args[1]) for v in value.values())
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_summary(obj: Any, where: str = "summary.json") -> Summary:
    """`obj` if it is a valid summary (every Summary key present with its type), else a UserError naming `where`."""
    if not isinstance(obj, dict):
        raise UserError(f"{where} does not hold a JSON object; the run folder is damaged: delete it and run again.")
    hints = typing.get_type_hints(Summary)
    missing = [k for k in hints if k not in obj]
    wrong = [f"{k}={obj[k]!r}"[:80] for k, h in hints.items() if k in obj and not matches(obj[k], h)]
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
