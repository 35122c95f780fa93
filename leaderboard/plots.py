"""Leaderboard plots (matplotlib, Agg canvas via `Figure`, no pyplot state), each saved as PNG and SVG.

Per table: error over the stream (continual curves, batches and domain boundaries in stream order, rounds marked),
a per-domain heatmap of the table's headline metric (entries × domains in stream order), adapted memory vs the
headline metric (the EcoTTA trade-off), forgetting per entry.
Every function returns the written file stem (without suffix), or None when there is nothing to plot.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tta_bench import rundir

SUFFIXES = (".png", ".svg")


def save(fig: Figure, stem: Path) -> Path:
    """Write `stem`.png (110 dpi) and `stem`.svg; no timestamps, so unchanged data gives unchanged files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f"{stem}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    with matplotlib.rc_context({"svg.hashsalt": "tta_bench"}):  # stable element ids
        fig.savefig(f"{stem}.svg", bbox_inches="tight", metadata={"Date": None})
    return stem


def _label(model: str, entry: str, models: int) -> str:
    return entry if models == 1 else f"{entry} ({model})"


def window_steps(run_batches: pd.DataFrame, window: int) -> list[dict]:
    """One run's windows of `window` images from its batches.csv (`batch`, `n`, `error`), by the schema's rule
    (`tta_bench.rundir.window_errors`, what the runner wrote as summary.json's `window_errors`); each row's
    `first`/`last` are batch numbers."""
    b = run_batches.sort_values("batch")
    numbers = b["batch"].astype(int).tolist()
    rows = rundir.window_errors(b["n"].astype(int).tolist(), b["error"].astype(float).tolist(), int(window))
    return [r | {"first": numbers[r["first"]], "last": numbers[r["last"]]} for r in rows]


def has_windows(runs: pd.DataFrame | None) -> bool:
    """Whether some run spans two windows or more (`n_samples` ≥ 2 `window`): only then do the curve's window
    steps and the page's worst-window column say more than the mean error."""
    if runs is None or runs.empty or "window" not in runs or "n_samples" not in runs:
        return False
    return bool((runs["n_samples"].astype(float) >= 2 * runs["window"].astype(float)).any())


def curves(
    batches: pd.DataFrame, stem: Path, smooth: int | None = None, runs: pd.DataFrame | None = None
) -> Path | None:
    """Batch error (%) over the stream, mean over seeds, running mean over `smooth` batches (default:
    ~1/40 of the stream); thin lines at domain changes, dashed lines at round boundaries.

    With `runs` (the table's rows of `Collection.runs`: `run_id`, `window`, `collapse_threshold`, `collapsed`) and
    at least two windows in some run, the long-horizon metrics too: the error of each window of `window` images as
    a pale step behind its entry's curve (mean over seeds), ▼ over the entry's worst full window, a dotted line at
    the collapse threshold when the curves come within 15 pp of it, and "(collapsed)" after an entry any of whose
    seeds collapsed."""
    if batches.empty:
        return None
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
    models = batches["model"].nunique()
    n_batches = int(batches["batch"].max()) + 1
    w = smooth or max(1, round(n_batches / 40))
    info = _window_info(runs)
    show_windows = has_windows(runs)
    steps = {rid: window_steps(g, info[rid][0]) for rid, g in batches.groupby("run_id") if rid in info}
    top = 0.0
    for (model, entry), g in batches.groupby(["model", "entry"], sort=False):
        per_batch = g.groupby("batch")["error"].mean()
        y = per_batch.rolling(w, min_periods=1).mean()
        rids = [r for r in g["run_id"].unique() if r in steps]
        label = _label(model, entry, models) + (" (collapsed)" if any(info[r][2] for r in rids) else "")
        (line,) = ax.plot(y.index, y.to_numpy(), lw=1.4, label=label)
        top = max(top, float(np.nanmax(y.to_numpy())))
        if show_windows and rids:
            top = max(top, _draw_windows(ax, [steps[r] for r in rids], line.get_color()))
    if show_windows and info:
        threshold = next(iter(info.values()))[1]
        if threshold is not None and not math.isnan(threshold) and top >= threshold - 15:
            ax.axhline(threshold, color="0.35", ls=":", lw=1.0)
            ax.text(0.0, threshold, " collapse threshold", transform=ax.get_yaxis_transform(), va="bottom",
                    fontsize=7, color="0.35")  # fmt: skip
    ref = batches[batches["run_id"] == batches["run_id"].iat[0]].sort_values("batch")
    seg_start = ref[(ref["segment"] != ref["segment"].shift()) | (ref["round"] != ref["round"].shift())]
    for b in seg_start["batch"].iloc[1:]:
        ax.axvline(b - 0.5, color="0.85", lw=0.6, zorder=0)
    for b, r in ref[ref["round"] != ref["round"].shift()][["batch", "round"]].itertuples(index=False):
        if b > 0:
            ax.axvline(b - 0.5, color="crimson", ls="--", lw=1.2)
        ax.text(b, 1.0, f" round {r}", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8, color="crimson")
    if len(seg_start) <= 60:
        ax.set_xticks(seg_start["batch"].to_numpy() - 0.5)
        ax.set_xticklabels(seg_start["segment"].tolist(), rotation=90, fontsize=7)
    ax.set_xlim(-0.5, n_batches - 0.5)
    ax.set_ylabel(f"batch error % (running mean of {w})")
    ax.set_xlabel(
        "batches (ticks: domain starts)" + ("; pale steps: error per window, ▼ worst window" if show_windows else "")
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, stem)


def _window_info(runs: pd.DataFrame | None) -> dict[str, tuple[int, float, bool]]:
    """run_id -> (window, collapse threshold, collapsed) for runs that recorded a window."""
    if runs is None or runs.empty or "window" not in runs:
        return {}
    out = {}
    for r in runs.to_dict("records"):
        win = r.get("window")
        if win is not None and not (isinstance(win, float) and math.isnan(win)) and win >= 1:
            thr = r.get("collapse_threshold")
            out[r["run_id"]] = (int(win), math.nan if thr is None else float(thr), bool(r.get("collapsed", False)))
    return out


def _draw_windows(ax, per_seed: list[list[dict]], color: str) -> float:
    """Pale steps of the seeds' mean window error, ▼ over the worst full window; returns the highest step."""
    by_window: dict[int, list[dict]] = {}
    for steps in per_seed:
        for r in steps:
            by_window.setdefault(r["window"], []).append(r)
    rows = [v[0] | {"error": float(np.mean([r["error"] for r in v]))} for _, v in sorted(by_window.items())]
    for r in rows:
        ax.hlines(r["error"], r["first"] - 0.5, r["last"] + 0.5, colors=color, lw=3.5, alpha=0.3)
    worst = max([r for r in rows if r["full"]] or rows, key=lambda r: r["error"])  # a short tail is not judged
    ax.plot([(worst["first"] + worst["last"]) / 2], [worst["error"]], marker="v", ms=6, color=color, ls="none")
    return max(r["error"] for r in rows)


def heatmap(grid: pd.DataFrame, stem: Path, label: str = "error %") -> Path | None:
    """A per-domain metric (`label`, e.g. error % or mIoU %) per entry (rows, as given: ranked) and domain
    (columns, as given: stream order), annotated. `grid`: entries × domains, NaN where not measured."""
    if grid.empty or not grid.notna().any().any():
        return None
    grid = grid.loc[:, grid.notna().any()]
    data = grid.to_numpy(dtype=float)
    cols, rows = [str(c) for c in grid.columns], [str(r) for r in grid.index]
    fig = Figure(figsize=(min(24.0, max(5.0, 0.55 * len(cols) + 2.5)), max(2.2, 0.42 * len(rows) + 1.6)))
    ax = fig.add_subplot()
    higher_better = not label.startswith(("error", "balanced error"))
    im = ax.imshow(data, cmap="viridis" if higher_better else "viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if data.size <= 600 and len(cols) <= 40:
        mid = np.nanmean(data)
        for (i, j), v in np.ndenumerate(data):
            dark = v < mid if higher_better else v > mid
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=label, fraction=0.04)
    ax.set_title(f"{label.split(' %')[0]} per domain, in stream order (mean over seeds)", fontsize=10)
    return save(fig, stem)


def memory_scatter(summary: pd.DataFrame, stem: Path, metric=None) -> Path | None:
    """Adapted memory (`adapt_mb`, MB) vs the table's headline metric (`metric`: a `tta_bench.rundir.Metric`,
    default mean error %), error bars = std over seeds."""
    key, label = (metric.key, f"{metric.label} % {metric.arrow}") if metric is not None else ("mean_error", "error %")
    mean, std = f"{key}_mean", f"{key}_std"
    if mean not in summary:
        return None
    s = summary[summary["adapt_mb_mean"].notna() & summary[mean].notna()]
    if s.empty:
        return None
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    models = s["model"].nunique()
    for i, (_, r) in enumerate(s.iterrows()):
        yerr = None if std not in r or math.isnan(r[std]) else r[std]
        point = ax.errorbar(r["adapt_mb_mean"], r[mean], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(
            _label(r["model"], r["entry"], models),
            (r["adapt_mb_mean"], r[mean]),
            textcoords="offset points",
            xytext=(5, -8 + 11 * (i % 3)),  # rows sorted by the metric: staggered upwards, no overprinting
            fontsize=8,
            color=point.lines[0].get_color(),
        )
    pos = s["adapt_mb_mean"][s["adapt_mb_mean"] > 0]
    if len(pos) and pos.max() / pos.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("adapt_mb (params + grads + optimizer + copies + saved activations, MB)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.set_title(f"memory vs {label.split(' %')[0]}", fontsize=10)
    return save(fig, stem)


def forgetting_bars(summary: pd.DataFrame, stem: Path) -> Path | None:
    """Forgetting (clean error after − before, percentage points) per entry, error bars = std over seeds."""
    s = summary[summary["forgetting_mean"].notna()]
    if s.empty:
        return None
    models = s["model"].nunique()
    labels = [_label(m, e, models) for m, e in zip(s["model"], s["entry"])]
    fig = Figure(figsize=(max(4.5, 0.7 * len(s) + 2), 3.6))
    ax = fig.add_subplot()
    yerr = s["forgetting_std"].fillna(0.0).to_numpy()
    colors = ["tab:red" if v > 0 else "tab:blue" for v in s["forgetting_mean"]]
    ax.bar(range(len(s)), s["forgetting_mean"].to_numpy(), yerr=yerr, capsize=3, color=colors)
    ax.set_xticks(range(len(s)), labels, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlim(-1, len(s))
    ax.set_ylabel("forgetting (pp of clean error)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("forgetting: clean error after − before", fontsize=10)
    return save(fig, stem)
