"""The METRICS table: every result metric of a run, declared once (key, label, unit, direction, format, which task
it headlines, whether it is aggregated over seeds and shown as a page column). The runner's report, the
leaderboard's CSVs, its statistics, the page and the plots iterate this table (read at call time), so adding a
metric is computing it into summary.json plus one row here.

Also the window rule of the long-horizon metrics (`window_errors`), shared by the runner and the leaderboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One row of METRICS: a summary.json key and how it is shown, compared and aggregated.

    `unit` follows the label in column titles ("%", "pp", "MB", or "" where the label says it); `digits`: decimals
    on the page; `headline`: the tasks it headlines (the first metric of a task's headline ranks its tables);
    `group`: stream-specific headline groups (a summary holding every key of a group is headlined by it);
    `core`: a key of every summary.json, a fixed column of runs.csv; `aggregated`: mean, std over seeds in
    summary.csv; `column`: an optional result column of the page (shown where a row has a value), `std` with ± std.
    """

    key: str
    label: str
    higher_is_better: bool
    unit: str = "%"
    meaning: str = ""
    digits: int = 2
    headline: tuple[str, ...] = ()
    group: str = ""
    core: bool = False
    aggregated: bool = False
    column: bool = False
    std: bool = False

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def title(self) -> str:
        """Column title: label, unit and direction (`ECE % ↓`, `adapt MB ↓`, `images/s ↑`)."""
        return " ".join(p for p in (self.label, self.unit, self.arrow) if p)

    def better(self, a: float, b: float) -> bool:
        """True when value `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b


_CORE = {"core": True, "aggregated": True}
METRICS: tuple[Metric, ...] = (
    Metric("mean_error", "error", False, meaning="top-1 error (%), mean over domains", headline=("classification",),
           **_CORE),
    Metric("balanced_error", "balanced error", False, meaning="mean per-class error (%) over the stream",
           headline=("binary",)),
    Metric("auc", "AUC", True, meaning="ROC AUC (%) of the positive class over the stream", headline=("binary",)),
    Metric("miou", "mIoU", True, meaning="mean intersection over union (%) over the stream's pixels",
           headline=("segmentation",)),
    Metric("harmonic_mean", "HM", True, meaning="harmonic mean (%) of base and new accuracy", group="base-to-new"),
    Metric("base_acc", "base acc", True, meaning="accuracy (%) on the classes seen in few-shot training",
           group="base-to-new"),
    Metric("new_acc", "new acc", True, meaning="accuracy (%) on the classes never seen in training",
           group="base-to-new"),
    Metric("target_acc", "target acc", True, meaning="accuracy (%), mean over the shifted datasets", group="target"),
    Metric("source_acc", "source acc", True, meaning="accuracy (%) on the source dataset", group="target"),
    Metric("worst_group_acc", "worst-group acc", True, column=True, aggregated=True,
           meaning="accuracy (%) of the worst (class, attribute) group: streams with group labels (spurious shifts)"),
    Metric("avg_group_acc", "avg-group acc", True, column=True, aggregated=True,
           meaning="unweighted mean accuracy (%) over the (class, attribute) groups present"),
    Metric("mean_entropy", "entropy", False, unit="nats",
           meaning="mean prediction entropy over the stream (label-free; model selection's entropy criterion)"),
    Metric("marginal_entropy", "marginal entropy", True, unit="nats",
           meaning="entropy of the stream's mean prediction (label-free; with mean entropy, the IM criterion)"),
    Metric("ood_auroc", "outlier AUROC", True, column=True, aggregated=True,
           meaning="open-world streams (stream.outliers): ROC AUC (%) of the outlier score, outliers vs the rest"),
    Metric("ood_fpr95", "FPR@95", False, column=True, aggregated=True,
           meaning="open-world streams: outliers accepted (%) where 95 % of in-distribution images are accepted"),
    Metric("time_utility", "time utility", True, column=True, aggregated=True,
           meaning="realistic setting: mean per-batch accuracy × 1/(1 + delay/τ), delay in source forwards (%)"),
    Metric("ece", "ECE", False, meaning="expected calibration error (%)", column=True, **_CORE),
    Metric("worst_window_error", "worst window", False, column=True,
           meaning="error of the worst full window of stream.window images (%)"),
    Metric("clean_error_before", "clean error before", False, meaning="clean error before the stream (%)", core=True),
    Metric("clean_error_after", "clean error after", False, meaning="clean error after the stream (%)", **_CORE),
    Metric("forgetting", "forgetting", False, "pp", "clean error after − before (pp)", column=True, std=True,
           **_CORE),
    Metric("adapt_mb", "adapt MB", False, "", "params + grads + optimizer + copies + activations", column=True,
           **_CORE),
    Metric("peak_device_mb", "peak MB", False, "", "peak GPU memory", column=True, **_CORE),
    Metric("images_per_s", "images/s", True, "", "stream throughput", digits=0, column=True, **_CORE),
)  # fmt: skip


# The long-horizon metrics (summary.json `window_errors`, `worst_window_error`, `collapsed`): the default window and
# how close to chance error a window must come to count as a collapse. The runner, the streams' options, the page and
# its plots use these.
DEFAULT_WINDOW = 1000  # images per window (stream.window)
COLLAPSE_MARGIN = 5.0  # percentage points below chance error that still count as collapsed


def metric(key: str) -> Metric:
    """The METRICS row of `key`; a key no row declares (a stream's own scalar) gets a plain row (lower is better)."""
    return next((m for m in METRICS if m.key == key), Metric(key, key, False))


def core_keys() -> tuple[str, ...]:
    """Keys every summary.json holds that the leaderboard keeps as fixed columns of runs.csv."""
    return tuple(m.key for m in METRICS if m.core)


def aggregated_keys() -> tuple[str, ...]:
    """Keys aggregated over seeds (mean, std) in every table, beside a table's own extra scalars."""
    return tuple(m.key for m in METRICS if m.aggregated)


def headline(task: str | None, keys: Any = ()) -> tuple[Metric, ...]:
    """The headline metrics of a run of `task` whose summary holds `keys` (first = the one a table ranks by).

    A stream-specific group wins where the summary holds all of its keys (base-to-new CLIP tracks: HM, base and new
    accuracy). `mean_error` stays available everywhere (it is in every summary); it is only not the headline of tasks
    that declare another one."""
    keys = set(keys)
    groups: dict[str, list[Metric]] = {}
    for m in METRICS:
        if m.group:
            groups.setdefault(m.group, []).append(m)
    for group in groups.values():
        if all(m.key in keys for m in group):
            return tuple(group)
    own = tuple(m for m in METRICS if (task or "classification") in m.headline)
    return own or (metric("mean_error"),)


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
