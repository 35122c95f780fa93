"""Leaderboard plots (matplotlib, Agg canvas via `Figure`, no pyplot state), each saved as PNG and SVG.

Per table: error over the stream (continual curves, batches and domain boundaries in stream order, rounds marked),
a per-domain heatmap of the table's headline metric (entries × domains in stream order), adapted memory vs the
headline metric (the EcoTTA trade-off), forgetting per entry.
Every function returns the written file stem (without suffix), or None when there is nothing to compare (fewer
than two entries: the page says so in a line instead).

Entries are named by `labels` ({(model, entry): short name}) and coloured by `colors` ({(model, entry): colour},
`palette`: one colour per method name across every plot of a page). Long names are wrapped; every figure is saved
with a tight bounding box, and `clipped(fig)` lists any text that would still fall outside the saved image.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.text
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tta_bench import rundir

SUFFIXES = (".png", ".svg")
# tab10 then the light halves of tab20: 20 distinct colours before any repeats
COLORS = (*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["tab20"].colors[1::2])
Key = tuple[str, str]  # (model, entry)


def palette(names: Iterable[str]) -> dict[str, str]:
    """One colour (hex) per name, in the order given (baselines first keeps source/norm grey-blue alike on every
    page); the same name always gets the same colour within one page."""
    out: dict[str, str] = {}
    for n in dict.fromkeys(names):
        out[n] = matplotlib.colors.to_hex(COLORS[len(out) % len(COLORS)])
    return out


def wrap(text: str, width: int = 28) -> str:
    """A label broken into lines of at most `width` characters (at spaces and commas)."""
    return "\n".join(textwrap.wrap(text.replace(",", ", ").replace(",  ", ", "), width)) or text


def _look(keys: list[Key], labels: dict[Key, str] | None, colors: dict[Key, str] | None) -> dict[Key, tuple]:
    """(label, colour, line style) per entry; several models: the model in the label and a dash style each."""
    models = list(dict.fromkeys(m for m, _ in keys))
    styles = ("-", "--", ":", "-.")
    fallback = palette(e for _, e in keys)
    out = {}
    for m, e in keys:
        name = (labels or {}).get((m, e), e)
        out[(m, e)] = (
            wrap(name if len(models) == 1 else f"{name} ({m})"),
            (colors or {}).get((m, e), fallback[e]),
            styles[models.index(m) % len(styles)],
        )
    return out


def clipped(fig: Figure) -> list[str]:
    """Texts (visible, non-empty) whose drawn box is not inside the figure's tight bounding box, which is what
    `save` writes: an empty list means no label is cut off in the saved image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)  # a bare Figure: Agg
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # inches -> display pixels
    ticks, drawn = set(), set()  # tick labels outside the axis' view limits are not drawn at all
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for t in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks |= {id(t.label1), id(t.label2)}
            for t in axis._update_ticks():
                drawn |= {id(t.label1), id(t.label2)}
    out = []
    for t in fig.findobj(matplotlib.text.Text):
        if not t.get_visible() or not t.get_text().strip() or (id(t) in ticks and id(t) not in drawn):
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            out.append(t.get_text())
    return out


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
    batches: pd.DataFrame,
    stem: Path,
    smooth: int | None = None,
    runs: pd.DataFrame | None = None,
    labels: dict[Key, str] | None = None,
    colors: dict[Key, str] | None = None,
) -> Path | None:
    """Batch error (%) over the stream, mean over seeds, running mean over `smooth` batches (default:
    ~1/40 of the stream); thin lines at domain changes, dashed lines and a label at round boundaries (two rounds or
    more). None with fewer than two entries.

    With `runs` (the table's rows of `Collection.runs`: `run_id`, `window`, `collapse_threshold`, `collapsed`) and
    at least two windows in some run, the long-horizon metrics too: the error of each window of `window` images as
    a pale step behind its entry's curve (mean over seeds), ▼ over the entry's worst full window, a dotted line at
    the collapse threshold when the curves come within 15 pp of it, and "(collapsed)" after an entry any of whose
    seeds collapsed."""
    if batches.empty:
        return None
    keys = list(dict.fromkeys(zip(batches["model"], batches["entry"])))
    if len(keys) < 2:
        return None
    look = _look(keys, labels, colors)
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
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
        label, color, style = look[(model, entry)]
        label += " (collapsed)" if any(info[r][2] for r in rids) else ""
        ax.plot(y.index, y.to_numpy(), lw=1.4, label=label, color=color, ls=style)
        top = max(top, float(np.nanmax(y.to_numpy())))
        if show_windows and rids:
            top = max(top, _draw_windows(ax, [steps[r] for r in rids], color))
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
    rounds = ref[ref["round"] != ref["round"].shift()][["batch", "round"]]
    if len(rounds) > 1:  # one round: no round marks at all
        for b, r in rounds.itertuples(index=False):
            if b > 0:
                ax.axvline(b - 0.5, color="0.3", ls="--", lw=1.0)
            ax.text(b, 0.98, f" round {int(r) + 1}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                    color="0.3")  # fmt: skip
    one_domain = len(seg_start) == 1  # e.g. CCC: one continuously changing domain, batches on the axis
    if 1 < len(seg_start) <= 60:
        ax.set_xticks(seg_start["batch"].to_numpy() - 0.5)
        ax.set_xticklabels(seg_start["segment"].tolist(), rotation=90, fontsize=7)
    ax.set_xlim(-0.5, n_batches - 0.5)
    ax.set_ylabel("error % per batch" if w == 1 else f"error %, mean of {w} consecutive batches")
    ax.set_xlabel(
        ("batch" if one_domain else "stream position (ticks: where each domain starts)")
        + ("; pale steps: error per window, ▼ worst window" if show_windows else "")
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, stem)


def domain_lines(grid: pd.DataFrame, stem: Path, label: str, colors: dict[str, str] | None = None) -> Path | None:
    """A per-domain metric (`label`, e.g. "balanced error %") of each entry (rows of `grid`, labelled) over the
    domains in stream order (columns): the curve of tables ranked by a metric batches.csv does not hold (it is
    recorded per domain). None with fewer than two entries."""
    grid = grid.loc[:, grid.notna().any()] if not grid.empty else grid
    if grid.empty or len(grid.index) < 2:
        return None
    fallback = palette(str(r) for r in grid.index)
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(grid.columns))
    for name, row in grid.iterrows():
        color = (colors or {}).get(str(name), fallback[str(name)])
        ax.plot(x, row.to_numpy(dtype=float), marker="o", ms=4, lw=1.4, color=color, label=wrap(str(name)))
    few = len(x) <= 8
    ax.set_xticks(x, [str(c) for c in grid.columns], rotation=30 if few else 90, ha="right" if few else "center",
                  fontsize=8 if few else 7)  # fmt: skip
    ax.set_xlim(-0.5, len(x) - 0.5)
    ax.set_ylabel(f"{label} per domain")
    ax.set_xlabel("domains in stream order (mean over seeds and rounds)")
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
    """A per-domain metric (`label`, e.g. error % or mIoU %) per entry (rows, as given: ranked and labelled) and
    domain (columns, as given: stream order), annotated. `grid`: entries × domains, NaN where not measured. None
    with fewer than two entries."""
    if grid.empty or not grid.notna().any().any() or len(grid.index) < 2:
        return None
    grid = grid.loc[:, grid.notna().any()]
    data = grid.to_numpy(dtype=float)
    cols, rows = [str(c) for c in grid.columns], [wrap(str(r), 36) for r in grid.index]
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


def memory_scatter(
    summary: pd.DataFrame,
    stem: Path,
    metric=None,
    labels: dict[Key, str] | None = None,
    colors: dict[Key, str] | None = None,
) -> Path | None:
    """Adapted memory (`adapt_mb`, MB) vs the table's headline metric (`metric`: a `tta_bench.rundir.Metric`,
    default mean error %), error bars = std over seeds; entries named in a legend beside the axes (no labels over
    the points). None with fewer than two entries."""
    key, label = (metric.key, f"{metric.label} % {metric.arrow}") if metric is not None else ("mean_error", "error %")
    mean, std = f"{key}_mean", f"{key}_std"
    if mean not in summary or "adapt_mb_mean" not in summary:
        return None
    s = summary[summary["adapt_mb_mean"].notna() & summary[mean].notna()]
    if len(s) < 2:
        return None
    look = _look(list(zip(s["model"], s["entry"])), labels, colors)
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    for _, r in s.iterrows():
        yerr = None if std not in r or math.isnan(r[std]) else r[std]
        name, color, _ = look[(r["model"], r["entry"])]
        ax.errorbar(r["adapt_mb_mean"], r[mean], yerr=yerr, fmt="o", capsize=3, color=color, label=name)
    pos = s["adapt_mb_mean"][s["adapt_mb_mean"] > 0]
    if len(pos) and pos.max() / pos.min() > 20:  # zero MB (source) stays on the axis: linear below the smallest
        ax.set_xscale("symlog", linthresh=float(pos.min())) if (s["adapt_mb_mean"] <= 0).any() else ax.set_xscale("log")
    ax.set_xlabel("adapted memory, MB\n(params + grads + optimizer + copies + saved activations)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"memory vs {label.split(' %')[0]}", fontsize=10)
    return save(fig, stem)


def forgetting_bars(
    summary: pd.DataFrame, stem: Path, labels: dict[Key, str] | None = None, colors: dict[Key, str] | None = None
) -> Path | None:
    """Forgetting (clean error after − before, percentage points) per entry, horizontal bars (names read level),
    error bars = std over seeds. None with fewer than two entries, or when every entry forgot the same."""
    if "forgetting_mean" not in summary:
        return None
    s = summary[summary["forgetting_mean"].notna()]
    if len(s) < 2 or s["forgetting_mean"].nunique() < 2:  # equal bars compare nothing (the table shows the value)
        return None
    look = _look(list(zip(s["model"], s["entry"])), labels, colors)
    names = [look[k][0] for k in zip(s["model"], s["entry"])]
    fig = Figure(figsize=(7, max(2.4, 0.45 * sum(n.count("\n") + 1 for n in names) + 1.4)))
    ax = fig.add_subplot()
    xerr = s["forgetting_std"].fillna(0.0).to_numpy() if "forgetting_std" in s else None
    y = np.arange(len(s))
    ax.barh(y, s["forgetting_mean"].to_numpy(), xerr=xerr, capsize=3, color=[look[k][1] for k in zip(s["model"],
            s["entry"])])  # fmt: skip
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()  # ranked order, top to bottom
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("forgetting: clean error after − before the stream, pp (> 0: worse on clean data)")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, stem)
