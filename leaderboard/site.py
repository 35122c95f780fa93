"""build(runs_dir, out) -> the leaderboard site: CSVs, plots and a static index.html (Jinja2 template).

The page opens with one overview matrix per task family (`leaderboard.overview.overview_tables`: methods ×
benchmarks, the headline metric), then the detail tables in family and stream order, titled in words, entries by
their short names (`leaderboard.names`), the protocol collapsed; plots only where two entries or more compare, one
colour per entry name across the page.

Layout of `out/`:
  index.html, style.css          the page (works from the file system; a few lines of vanilla JS sort tables)
  csv/runs.csv                   one row per run (stream, setting, model, method, seed): metrics + err:<domain>
  csv/domains.csv                one row per run, round and domain (long format)
  csv/summary.csv                one row per (table, model, entry): mean ± std over seeds, CI, paired tests
  csv/summary_<table>.csv        the same, one file per table
  plots/<table>-{curve,heatmap,memory,forgetting}.{png,svg}
  configs/<run id>.json          copies of each run's config.json (rows link here)

The site is built in a temporary folder beside `out` and swapped in whole (`tta_bench.rundir.replace_tree`):
a build killed midway leaves the previous site intact, never an index.html linking to missing files. File
names come only from validated hex run ids and from table slugs, never from file contents or paths.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tta_bench import rundir
from tta_bench.kernel import dumps_json
from tta_bench.leaderboard import names, parity, plots
from tta_bench.leaderboard.collect import LOCATION_OPTIONS, Collection, collect, printable, protocol_opts
from tta_bench.leaderboard.overview import disambiguated_titles, overview_tables, table_order
from tta_bench.leaderboard.stats import ALPHA, BASELINES, summarize

TEMPLATES = Path(__file__).resolve().parent / "templates"
PLOT_KINDS = ("curve", "heatmap", "memory", "forgetting")


@dataclass
class Site:
    """What `build` wrote."""

    out: Path
    n_runs: int
    incomplete: list[Path]
    unreadable: list[tuple[Path, str]]
    tables: list[str]
    summary: pd.DataFrame
    runs: pd.DataFrame
    plots: list[Path]


def slug(table: str) -> str:
    """Short file-name-safe id of a table key: `<stream>_<setting>_<6 hex of the key's hash>`."""
    stream, setting = table.split("/")[:2]
    digest = hashlib.sha256(table.encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9-]+", "-", f"{stream}_{setting}") + f"_{digest}"


def build(runs_dir: Path | str, out: Path | str) -> Site:
    """Read every completed run folder under `runs_dir` and write the site into `out` (see module doc)."""
    runs_dir, out = Path(runs_dir), Path(out)
    col = collect(runs_dir, exclude=out)
    site = rundir.replace_tree(lambda tmp: write_site(col, runs_dir, tmp), out)
    site.out = out
    site.plots = [out / p.relative_to(p.parents[1]) for p in site.plots]
    return site


def write_site(col: Collection, runs_dir: Path, out: Path) -> Site:
    """Write CSVs, plots, configs and index.html of `col` into the (new, empty) folder `out`."""
    for sub in ("csv", "plots", "configs"):
        (out / sub).mkdir(parents=True)
    summary = summarize(col.runs, col.domains) if not col.runs.empty else pd.DataFrame()
    col.runs.to_csv(out / "csv" / "runs.csv", index=False)
    col.domains.to_csv(out / "csv" / "domains.csv", index=False)
    summary.to_csv(out / "csv" / "summary.csv", index=False)
    tables, written, tables_ctx = [], [], []
    order = table_order(col, summary) if not col.runs.empty else []
    titles = disambiguated_titles(order, col)
    short = names.short_names(col.runs, col.configs)
    colors = method_colors(short)
    for table in order:
        s = summary[summary["table"] == table].reset_index(drop=True)
        s = s.drop(columns=[c for c in s.columns if c.startswith("err:") and s[c].isna().all()])
        s.to_csv(out / "csv" / f"summary_{slug(table)}.csv", index=False)
        look = {
            (m, e): (v["short"], colors[v["short"]]) for (t, m, e), v in short.items() if t == table
        }  # (model, entry) -> (short name, colour) of this table
        try:
            figs, files = table_plots(table, s, col, out, look)
            context = table_context(table, s, col, figs, titles[table], short)
        except Exception as e:  # noqa: BLE001 - a table that cannot be drawn is listed with its runs, never sinks the site
            why = f"its table {table} could not be drawn ({type(e).__name__}: {e})"
            col.unreadable += [(col.folders[r], why) for r in col.runs.loc[col.runs["table"] == table, "run_id"]]
            continue
        written += files
        tables.append(table)
        tables_ctx.append(context)
    for rid in col.folders:
        if rundir.is_run_id(rid):  # collect admits only valid ids; never a path from a file's contents
            # the validated content, not the file again (it may have been replaced since, by a FIFO or a huge file)
            (out / "configs" / f"{rid}.json").write_text(dumps_json(col.configs[rid]), encoding="utf-8")
    drawn = [t for t in order if t in tables]
    overview = overview_tables(col, summary[summary["table"].isin(drawn)] if drawn else summary) if drawn else []
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    html = env.get_template("index.html").render(
        tables=tables_ctx,
        overview=overview,
        groups=stream_groups(tables_ctx),
        definitions=definitions(summary),
        n_runs=len(col.runs),
        n_incomplete=len(col.incomplete),
        unreadable=[{"path": printable(str(p)), "why": printable(why)} for p, why in col.unreadable],
        runs_dir=printable(str(runs_dir)),
        alpha=ALPHA,
        baselines=BASELINES,
        collapse_margin=f"{rundir.COLLAPSE_MARGIN:g}",
        parity=parity.sections(runs_dir),  # `reproduce` reports under <runs>/parity/
        selection=selection_tables(runs_dir),  # `sweep --select` tables under <runs>/selection/
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    shutil.copyfile(TEMPLATES / "style.css", out / "style.css")
    return Site(out, len(col.runs), col.incomplete, col.unreadable, tables, summary, col.runs, written)


def selection_tables(runs_dir: Path) -> list[dict[str, Any]]:
    """The model-selection tables under `<runs_dir>/selection/` (`tta_bench.selection`), one per benchmark and
    method: each criterion's chosen options, its test error and the gap to the oracle, formatted for the page."""
    from tta_bench.rundir import selection

    tables: dict[tuple[str, str], dict[str, Any]] = {}
    for r in selection.read(runs_dir):
        t = tables.setdefault((r["benchmark"], r["method"]), {"benchmark": printable(r["benchmark"]),
                              "method": printable(r["method"]), "points": r["points"], "rows": []})  # fmt: skip
        t["rows"].append(
            {
                "criterion": r["criterion"],
                "meaning": selection.MEANINGS[r["criterion"]],
                "uses_labels": bool(r["uses_labels"]),
                "chosen": printable(str(r["chosen"])) if r["chosen"] is not None else "none",
                "error": _fmt(r["error"]),
                "gap": "" if r["gap"] is None else f"{r['gap']:+.2f}",
            }
        )
    return list(tables.values())


def method_colors(short: dict[tuple[str, str, str], dict[str, str]]) -> dict[str, str]:
    """One colour per entry name on the whole page (baselines first, then by name), the same in every plot."""
    labels = sorted({v["short"] for v in short.values()})
    first = [b for b in names.BASELINE_ORDER if b in labels]
    return plots.palette(first + [x for x in labels if x not in first])


def table_plots(
    table: str, s: pd.DataFrame, col: Collection, out: Path, look: dict[tuple[str, str], tuple[str, str]] | None = None
) -> tuple[list[dict], list[Path]]:
    """The plots of one table: (figure entries for the page, files written). Domains follow the stream's order.
    `look`: (model, entry) -> (short name, colour). Nothing is drawn for a table of one entry (nothing to compare).

    The curve plots the metric the table ranks by: the batch error over the stream where the table ranks by error,
    else the headline metric per domain in stream order (batches.csv holds only the error)."""
    if len(s) < 2:
        return [], []
    look = look or {}
    labels = {k: v[0] for k, v in look.items()}
    colors = {k: v[1] for k, v in look.items()}
    head = headline_of(s)
    metric = s["paired_metric"].iat[0] if "paired_metric" in s and len(s) else "error"
    label = head[0].label if metric != "error" else "error"
    order = domain_order(table, col)
    grid = domain_grid(s, col.domains[col.domains["table"] == table], metric, order, labels)
    batches = col.batches[col.batches["table"] == table]
    stem = out / "plots" / slug(table)
    if head[0].key == "mean_error" or metric == "error":
        curve = (
            plots.curves(batches, Path(f"{stem}-curve"), runs=col.runs[col.runs["table"] == table], labels=labels,
                         colors=colors),
            "Error over the stream, batches in stream order (mean over seeds); thin lines: domain changes; "
            "with two windows or more, pale steps: error per window of stream.window images, ▼ the worst full "
            f"window, dotted: the collapse threshold (chance error − {rundir.COLLAPSE_MARGIN:g} pp)",
        )  # fmt: skip
    else:
        by_label = {labels.get(k, k[1]) if s["model"].nunique() == 1 else f"{labels.get(k, k[1])} ({k[0]})": c
                    for k, c in colors.items()}  # fmt: skip
        curve = (
            plots.domain_lines(grid, Path(f"{stem}-curve"), f"{label} %", by_label),
            f"{head[0].label} per domain in stream order (mean over seeds): the metric this table ranks by",
        )
    made = {
        "curve": curve,
        "heatmap": (
            plots.heatmap(grid, Path(f"{stem}-heatmap"), label=f"{label} %"),
            f"Per-domain {label} (mean over seeds), domains in stream order",
        ),
        "memory": (
            plots.memory_scatter(s, Path(f"{stem}-memory"), head[0], labels=labels, colors=colors),
            f"Adapted memory vs {head[0].label} (EcoTTA trade-off)",
        ),
        "forgetting": (
            plots.forgetting_bars(s, Path(f"{stem}-forgetting"), labels=labels, colors=colors),
            "Forgetting on held-out clean data",
        ),
    }
    figs, written = [], []
    for kind in PLOT_KINDS:
        made_stem, caption = made[kind]
        if made_stem is not None:
            written += [Path(f"{made_stem}{x}") for x in plots.SUFFIXES]
            figs.append(
                {"png": f"plots/{made_stem.name}.png", "svg": f"plots/{made_stem.name}.svg", "caption": caption,
                 "kind": kind}
            )  # fmt: skip
    return figs, written


def domain_order(table: str, col: Collection) -> list[str]:
    """The table's domains in stream order (config.json `domain_order`, first appearance), then any others seen."""
    rids = col.runs.loc[col.runs["table"] == table, "run_id"].tolist()
    order: list[str] = []
    for rid in rids[:1]:
        for d in col.configs[rid].get("domain_order", []):
            for part in d.get("parts") or [[d.get("domain")]]:
                name = part[0] if isinstance(part, list) and part else d.get("domain")
                if isinstance(name, str) and name not in order:
                    order.append(name)
    seen = col.domains.loc[col.domains["table"] == table, "domain"].astype(str).tolist()
    return [d for d in order if d in seen] + [d for d in dict.fromkeys(seen) if d not in order]


def domain_grid(
    s: pd.DataFrame,
    domains: pd.DataFrame,
    metric: str,
    order: list[str],
    labels: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """Entries (rows, ranked as in `s`, labelled by `labels` {(model, entry): name} or the entry, `name (model)`
    with several models) × domains (columns, in `order`): the per-domain `metric` (domains.csv column), mean over
    seeds and rounds."""
    if s.empty or domains.empty or metric not in domains:
        return pd.DataFrame()
    kept = domains[domains["entry"].isin(s["entry"])]
    piv = kept.pivot_table(index=["model", "entry"], columns="domain", values=metric, aggfunc="mean")
    piv = piv.reindex(columns=[d for d in order if d in piv.columns])
    piv = piv.reindex(pd.MultiIndex.from_frame(s[["model", "entry"]]))
    models = s["model"].nunique()
    named = [(labels or {}).get((m, e), e) for m, e in piv.index]
    piv.index = [n if models == 1 else f"{n} ({m})" for n, (m, _e) in zip(named, piv.index)]
    return piv


def disambiguate(tables: list[dict[str, Any]]) -> None:
    """Tables sharing a title (same stream and setting, other protocol) get the differing key parts appended."""
    for title in {t["title"] for t in tables}:
        same = [t for t in tables if t["title"] == title]
        if len(same) > 1:
            parts = [t["key"].split("/") for t in same]
            diff = [i for i in range(max(map(len, parts))) if len({tuple(p[i : i + 1]) for p in parts}) > 1]
            for t, p in zip(same, parts):
                t["title"] += " · " + " · ".join(p[i] for i in diff if i < len(p))


def _distinct(values: list[Any]) -> str:
    seen = list(dict.fromkeys(str(v) for v in values if v is not None))
    return ", ".join(seen) if seen else "–"


def protocol(table: str, col: Collection) -> dict[str, str]:
    """The protocol shown with a table: setting, samples per domain, batch size, order, data, versions, ...

    Only what applies: no severity for a stream without severities, no clean-evaluation line for a stream without
    a clean split."""
    rids = col.runs.loc[col.runs["table"] == table, "run_id"].tolist()
    cfgs = [col.configs[r] for r in rids]
    c0 = cfgs[0]["config"]
    samples = [n for c in cfgs for n in c.get("samples_per_domain", {}).values()]
    dom_order = cfgs[0].get("domain_order", [])
    order = [
        f"{d['domain']}" + (f"@{d['severity']}" if d.get("severity") is not None else "")
        for d in dom_order
        if d.get("round", 0) == 0
    ]
    orders = {d.get("order", "sequential") for d in dom_order}
    versions = sorted({", ".join(f"{k} {v}" for k, v in c.get("versions", {}).items() if v) for c in cfgs})
    has_severity = any(d.get("severity") is not None for d in dom_order) or not dom_order
    sel = col.runs[col.runs["table"] == table]
    has_clean = (
        "clean_error_before" not in sel
        or sel["clean_error_before"].notna().any()
        or all(c["config"].get("clean_eval") == "off" for c in cfgs)
    )  # a stream without a clean split: no clean-evaluation line
    locations = sorted(
        {
            f"{k}={v}"
            for c in cfgs
            for k, v in c["config"].get("stream_opts", {}).items()
            if k in LOCATION_OPTIONS and v not in (None, True, False)
        }
        | {f"data dir {c.get('execution', {}).get('data_dir')}" for c in cfgs if c.get("execution", {}).get("data_dir")}
    )
    fps = sorted({str(c.get("data_fingerprint") or "not recorded (identity by stream options)") for c in cfgs})
    out = {
        "stream": c0["stream"],
        "setting": c0["setting"],
        "severity": str(c0["severity"]) if has_severity else "",
        "samples per domain": (
            f"{min(samples)}"
            if samples and min(samples) == max(samples)
            else f"{min(samples)}–{max(samples)}"
            if samples
            else "–"
        ),
        "limit asked": _distinct([c["config"]["limit"] if c["config"]["limit"] is not None else "all" for c in cfgs]),
        "batch size": str(c0["batch_size"]),
        "rounds": str(c0["rounds"]),
        "precision": c0["precision"],
        "clean eval": _distinct([c["config"]["clean_eval"] for c in cfgs]) if has_clean else "",
        "stream options": ", ".join(
            f"{k}={v}" for k, v in names.applicable_stream_opts(c0["setting"], protocol_opts(cfgs[0])).items()
        )
        or "–",  # only what applies to the setting: no gamma on a continual run
        "data fingerprint": ", ".join(fp if len(fp) <= 48 else fp[:45] + "…" for fp in fps),
        "data found at": " | ".join(locations) or "–",
        "order": f"{' / '.join(sorted(orders))}: " + " → ".join(order),
        "models": _distinct([c["config"]["model"] for c in cfgs]),
        "devices": _distinct([c.get("execution", {}).get("device") for c in cfgs]),
        "library versions": " | ".join(versions) or "–",
        "git commits": _distinct([((c.get("git") or {}).get("commit") or "")[:10] or None for c in cfgs]),
    }
    return {k: v for k, v in out.items() if v != ""}


# Protocol lines that make two tables of one stream separate tables (shown when a stream has several).
SPLITTING = ("setting", "severity", "samples per domain", "batch size", "rounds", "precision", "data fingerprint",
             "stream options")  # fmt: skip


def stream_groups(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tables grouped under their stream, in page order; a stream with several tables says what separates them."""
    groups: dict[str, dict[str, Any]] = {}
    for t in tables:
        g = groups.setdefault(t["protocol"]["stream"], {"stream": t["protocol"]["stream"], "tables": [], "why": ""})
        g["tables"].append(t)
    for g in groups.values():
        if len(g["tables"]) > 1:
            diff = [
                f"{k} ({' / '.join(dict.fromkeys(t['protocol'].get(k, '–') for t in g['tables']))})"
                for k in SPLITTING
                if len({t["protocol"].get(k, "–") for t in g["tables"]}) > 1
            ]
            g["why"] = (
                f"{len(g['tables'])} tables: runs are ranked together only under one protocol, and these differ in "
                + ("; ".join(diff) if diff else "their protocol")
                + ". Data paths never split a table (the data is named by its fingerprint)."
            )
    return list(groups.values())


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _key(v: Any) -> str:
    """Sort key for the page's JS: numbers as text, missing values empty (sorted last)."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def collapsed_seeds(sel: pd.DataFrame) -> list[int]:
    """Seeds of an entry whose worst window reached the collapse threshold (`collapsed` in summary.json)."""
    if "collapsed" not in sel:
        return []
    return sorted(int(x) for x in sel.loc[sel["collapsed"].astype(bool), "seed"])


def diverged_seeds(sel: pd.DataFrame) -> list[int]:
    """Seeds of these runs whose predictions went non-finite (NaN/inf) somewhere in the stream."""
    if "diverged" not in sel:
        return []
    return sorted(int(x) for x in sel.loc[sel["diverged"].astype(bool), "seed"])


def headline_of(s: pd.DataFrame) -> tuple[rundir.Metric, ...]:
    """The headline metrics recorded in a table's summary rows (`headline` column, see leaderboard.stats)."""
    keys = str(s["headline"].iat[0]).split(",") if "headline" in s and len(s) else ["mean_error"]
    return tuple(rundir.metric(k) for k in keys)


def _metric_column(
    s: pd.DataFrame, m: rundir.Metric, name: str, title: str, digits: int = 2, with_std: bool = True
) -> dict[str, Any]:
    """One result column: header, direction, and per row the text, sort key and whether it is the best."""
    mean = s[f"{name}_mean"] if f"{name}_mean" in s else pd.Series([math.nan] * len(s))
    std = s[f"{name}_std"] if f"{name}_std" in s else pd.Series([math.nan] * len(s))
    vals = [v for v in mean if not (isinstance(v, float) and math.isnan(v))]
    # the best value, marked only where values differ (a column of equal values has no best)
    best = (max(vals) if m.higher_is_better else min(vals)) if len(set(vals)) > 1 else None
    cells = [
        {
            "text": _fmt(v, digits if digits or not abs(v) < 10 else 2),  # slow runs: 0.54 images/s, not 1
            "small": f"± {_fmt(sd, digits)}" if with_std and _fmt(sd) != "–" else "",
            "key": _key(v),
            "best": best is not None and not math.isnan(v) and v == best,
        }
        for v, sd in zip(mean, std)
    ]
    return {"label": title, "better": "higher" if m.higher_is_better else "lower", "title": m.meaning, "cells": cells}


def result_columns(s: pd.DataFrame, col: Collection, table: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The table's result columns (headline metrics first, then error, ECE, forgetting, memory, speed), only those
    with a value in some row; and notes on what is absent and why."""
    head = headline_of(s)
    cols, notes = [], []
    for m in head:
        cols.append(_metric_column(s, m, m.key, m.title))
    first = head[0]
    if f"{first.key}_ci_low" in s:
        cols.append(
            {
                "label": "95 % CI",
                "better": "",
                "title": f"95 % confidence interval of the mean {first.label} over seeds (Student t)",
                "cells": [
                    {"text": "–" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]", "small": "", "key": _key(v)}
                    for lo, hi, v in zip(s[f"{first.key}_ci_low"], s[f"{first.key}_ci_high"], s[f"{first.key}_mean"])
                ],
            }
        )
    if first.key != "mean_error":
        error = rundir.metric("mean_error")
        cols.append(_metric_column(s, error, error.key, error.title))
    pm = s["paired_metric"].iat[0] if "paired_metric" in s and len(s) else "error"
    what = "error" if pm == "error" else first.label
    for b in BASELINES:
        if b not in set(s["entry"]):
            continue
        cells = []
        for r in s.to_dict("records"):
            d, p = r[f"delta_vs_{b}"], r[f"p_vs_{b}"]
            cells.append(
                {
                    "text": ("–" if math.isnan(d) else f"{d:+.2f}") + ("*" if r[f"sig_vs_{b}"] else ""),
                    "small": f"p {'< 0.001' if p < 0.001 else '= ' + _fmt(p, 3)}" if not math.isnan(d) else "",
                    "key": _key(d),
                    "best": False,
                    "sig": bool(r[f"sig_vs_{b}"]),
                }
            )
        cols.append({"label": f"Δ {what} vs {b}", "better": "", "title": f"paired per-domain {what} difference, pp",
                     "cells": cells})  # fmt: skip
    k_cols, k_notes = compute_columns(s, col, table)
    cols += k_cols
    notes += k_notes
    windows = plots.has_windows(col.runs[col.runs["table"] == table])  # a worst window needs two windows or more
    for m in rundir.METRICS:  # the optional result columns, in the table's order
        if not m.column or m in head or (m.key == "worst_window_error" and not windows):
            continue
        c = _metric_column(s, m, m.key, m.title, m.digits, with_std=m.std)
        if any(x["key"] != "" for x in c["cells"]):
            cols.append(c)
        elif m.key == "forgetting":
            notes.append(forgetting_note(table, col))
        elif m.key == "peak_device_mb":
            notes.append("No peak MB column: device memory peaks are measured on GPU only (these runs ran on CPU).")
    return cols, notes


K_MEANING = (
    "relative cost of the method (time of an adapted batch over a plain forward, measured on the run's device; "
    "fixed: stream.speed_ratio), mean over seeds; after each batch it adapts on, ceil(k) − 1 batches go unadapted"
)
ADAPTED_MEANING = "batches the method adapted on / batches in the stream (mean over seeds)"


def compute_columns(s: pd.DataFrame, col: Collection, table: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The realistic setting's and CCC's columns: k (the method's relative cost, measured on the run's device or
    fixed by stream.speed_ratio) and batches adapted / total (mean over seeds); a warning when every batch was
    adapted (then the realistic setting equals the continual one)."""
    sel = col.runs[col.runs["table"] == table]
    realistic = bool((sel["setting"] == "realistic").any())
    if not realistic and not sel["stream"].astype(str).str.startswith("ccc").any():
        return [], []
    total = col.batches[col.batches["table"] == table].groupby("run_id")["batch"].nunique()
    k_cells, b_cells, every = [], [], []
    for r in s.to_dict("records"):
        g = sel[(sel["model"] == r["model"]) & (sel["entry"] == r["entry"])]
        n_total = [int(total.get(rid, 0)) for rid in g["run_id"]]
        adapted = g["batches_adapted"].astype(float).tolist() if "batches_adapted" in g else []
        if adapted and n_total:
            a, t = sum(adapted) / len(adapted), sum(n_total) / len(n_total)
            text = f"{a:.0f} / {t:.0f}" if a == int(a) and t == int(t) else f"{a:.1f} / {t:.1f}"
            share = f"{100 * a / t:.0f} %" if t else ""
            b_cells.append({"text": text, "small": share, "key": _key(a / t if t else None)})
            every.append(all(x >= y for x, y in zip(adapted, n_total)))
        else:
            b_cells.append({"text": "–", "small": "", "key": ""})
        ks = g["speed_ratio"].astype(float).dropna().tolist() if "speed_ratio" in g else []
        fixed = [col.configs[r]["config"].get("stream_opts", {}).get("speed_ratio") is not None for r in g["run_id"]]
        how = "fixed" if all(fixed) else "measured" if not any(fixed) else "fixed/measured"
        k = sum(ks) / len(ks) if ks else math.nan
        k_cells.append({"text": _fmt(k), "small": how if ks else "", "key": _key(k)})
    cols = []
    if realistic:
        cols.append({"label": "k", "better": "lower", "cells": k_cells, "title": K_MEANING})
    cols.append({"label": "batches adapted", "better": "higher", "cells": b_cells, "title": ADAPTED_MEANING})
    notes = []
    if realistic and every and all(every):
        notes.append(
            "Warning: every entry adapted on every batch (k ≤ 1, or one batch per domain), so this realistic "
            "table equals the continual setting; a method only loses batches when adapting costs more than a "
            "forward pass (k > 1)."
        )
    elif realistic and any(every):
        short = names.short_names(sel, col.configs)
        who = [short[(table, r["model"], r["entry"])]["short"] for r, e in zip(s.to_dict("records"), every) if e]
        notes.append(f"Adapted on every batch (as in the continual setting): {', '.join(who)}.")
    return cols, notes


def forgetting_note(table: str, col: Collection) -> str:
    """Why a table has no forgetting column (no clean split in the stream, or --clean-eval off)."""
    sel = col.runs[col.runs["table"] == table]
    cfgs = [col.configs[r] for r in sel["run_id"]]
    if all(c["config"].get("clean_eval") == "off" for c in cfgs):
        return "No forgetting column: these runs were made with --clean-eval off (no clean error measured)."
    return (
        "No forgetting column: this stream has no held-out clean (source-domain) split, so clean error before and "
        "after the stream cannot be measured."
    )


def table_context(
    table: str,
    s: pd.DataFrame,
    col: Collection,
    figs: list[dict],
    title: str | None = None,
    short: dict[tuple[str, str, str], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Template context for one table: protocol, result columns (display text, sort keys, best marks), plots.
    Entries are shown by their short names (`names.short_names`), the full resolved options in a tooltip."""
    columns, notes = result_columns(s, col, table)
    short = short if short is not None else names.short_names(col.runs, col.configs)
    rows = []
    for rank, r in enumerate(s.to_dict("records"), 1):
        sel = col.runs[
            (col.runs["table"] == table) & (col.runs["model"] == r["model"]) & (col.runs["entry"] == r["entry"])
        ]
        name = short.get((table, r["model"], r["entry"]), {"short": r["entry"], "full": r["entry"]})
        rows.append(
            {
                "rank": rank,
                "entry": name["short"],
                "options": name["full"],
                "model": r["model"],
                "n_seeds": r["n_seeds"],
                "seeds": r["seeds"],
                "cells": [c["cells"][rank - 1] for c in columns],
                "diverged": diverged_seeds(sel),
                "collapsed": collapsed_seeds(sel),
                "configs": [{"seed": int(x.seed), "href": f"configs/{x.run_id}.json"} for x in sel.itertuples()],
            }
        )
    c = protocol(table, col)
    head = headline_of(s)
    return {
        "key": table,
        "id": slug(table),
        "title": title or f"{c['stream']} · {c['setting']}",
        "protocol": c,
        "columns": columns,
        "headline": f"{head[0].label} ({head[0].arrow}, {head[0].meaning})"
        + "".join(f"; also headline: {m.label} ({m.arrow}, {m.meaning})" for m in head[1:]),
        "notes": notes,
        "rows": rows,
        "figures": figs,
        "no_plots": "" if figs or len(rows) != 1 else (
            "One entry: nothing to compare, so no plots (its per-domain values are in the CSV)."),
        "csv": f"csv/summary_{slug(table)}.csv",
    }  # fmt: skip


# The definitions of metrics that have two readings (pooled over the stream, or a mean over domains): the page and
# its tables use one, stated once in the page's header; the other is in summary.csv.
POOLED = {
    "auc": "AUC is the ROC AUC of the positive class pooled over all the stream's images (summary.json `auc`, the "
    "run's results header); the mean of the per-domain AUCs is in summary.csv as auc_domains_mean",
    "balanced_error": "balanced error is pooled over the stream (mean per-class error of all its images); the mean "
    "of the per-domain values is in summary.csv as balanced_error_domains_mean, and the per-domain plots and paired "
    "tests use the per-domain values",
}


def definitions(summary: pd.DataFrame) -> list[str]:
    """The page's statements of which definition its pooled metrics use (only those some table shows)."""
    return [text for key, text in POOLED.items() if f"{key}_mean" in summary and summary[f"{key}_mean"].notna().any()]
