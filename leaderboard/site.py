"""build(runs_dir, out) -> the leaderboard site: CSVs, plots and a static index.html (Jinja2 template).

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

from leaderboard import plots
from leaderboard.collect import Collection, collect
from leaderboard.stats import ALPHA, BASELINES, summarize
from tta_bench import rundir

TEMPLATES = Path(__file__).resolve().parent / "templates"
PLOT_KINDS = {
    "curve": (plots.curves, "batches", "Error over the stream (mean over seeds); dashed lines: round boundaries"),
    "heatmap": (plots.heatmap, "summary", "Per-domain error (mean over seeds)"),
    "memory": (plots.memory_scatter, "summary", "Adapted memory vs error (EcoTTA trade-off)"),
    "forgetting": (plots.forgetting_bars, "summary", "Forgetting on held-out clean data"),
}


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
    for table in col.runs["table"].unique() if not col.runs.empty else []:
        s = summary[summary["table"] == table].reset_index(drop=True)
        s = s.drop(columns=[c for c in s.columns if c.startswith("err:") and s[c].isna().all()])
        s.to_csv(out / "csv" / f"summary_{slug(table)}.csv", index=False)
        figs, files = table_plots(table, s, col, out)
        written += files
        tables.append(table)
        tables_ctx.append(table_context(table, s, col, figs))
    for rid, folder in col.folders.items():
        if rundir.is_run_id(rid):  # collect admits only valid ids; never a path from a file's contents
            shutil.copyfile(folder / rundir.CONFIG, out / "configs" / f"{rid}.json")
    disambiguate(tables_ctx)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    html = env.get_template("index.html").render(
        tables=tables_ctx,
        n_runs=len(col.runs),
        n_incomplete=len(col.incomplete),
        unreadable=[{"path": str(p), "why": why} for p, why in col.unreadable],
        runs_dir=str(runs_dir),
        alpha=ALPHA,
        baselines=BASELINES,
    )
    (out / "index.html").write_text(html)
    shutil.copyfile(TEMPLATES / "style.css", out / "style.css")
    return Site(out, len(col.runs), col.incomplete, col.unreadable, tables, summary, col.runs, written)


def table_plots(table: str, s: pd.DataFrame, col: Collection, out: Path) -> tuple[list[dict], list[Path]]:
    """The plots of one table: (figure entries for the page, files written)."""
    data = {"summary": s, "batches": col.batches[col.batches["table"] == table]}
    figs, written = [], []
    for kind, (fn, source, caption) in PLOT_KINDS.items():
        stem = fn(data[source], out / "plots" / f"{slug(table)}-{kind}")
        if stem is not None:
            written += [Path(f"{stem}{x}") for x in plots.SUFFIXES]
            figs.append({"png": f"plots/{stem.name}.png", "svg": f"plots/{stem.name}.svg", "caption": caption})
    return figs, written


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
    """The protocol shown with a table: setting, samples per domain, batch size, order, versions, ..."""
    rids = col.runs.loc[col.runs["table"] == table, "run_id"].tolist()
    cfgs = [col.configs[r] for r in rids]
    c0 = cfgs[0]["config"]
    samples = [n for c in cfgs for n in c.get("samples_per_domain", {}).values()]
    order = [
        f"{d['domain']}" + (f"@{d['severity']}" if d.get("severity") is not None else "")
        for d in cfgs[0].get("domain_order", [])
        if d.get("round", 0) == 0
    ]
    orders = {d.get("order", "sequential") for d in cfgs[0].get("domain_order", [])}
    versions = sorted({", ".join(f"{k} {v}" for k, v in c.get("versions", {}).items() if v) for c in cfgs})
    return {
        "stream": c0["stream"],
        "setting": c0["setting"],
        "severity": str(c0["severity"]),
        "samples per domain": (
            f"{min(samples)}"
            if samples and min(samples) == max(samples)
            else f"{min(samples)}–{max(samples)}"
            if samples
            else "–"
        ),
        "limit": str(c0["limit"] if c0["limit"] is not None else "all"),
        "batch size": str(c0["batch_size"]),
        "rounds": str(c0["rounds"]),
        "precision": c0["precision"],
        "clean eval": c0["clean_eval"],
        "stream options": ", ".join(f"{k}={v}" for k, v in c0.get("stream_opts", {}).items()) or "–",
        "order": f"{' / '.join(sorted(orders))}: " + " → ".join(order),
        "models": _distinct([c["config"]["model"] for c in cfgs]),
        "devices": _distinct([c.get("execution", {}).get("device") for c in cfgs]),
        "library versions": " | ".join(versions) or "–",
        "git commits": _distinct([(c.get("git") or {}).get("commit", "")[:10] or None for c in cfgs]),
    }


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _key(v: Any) -> str:
    """Sort key for the page's JS: numbers as text, missing values empty (sorted last)."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def diverged_seeds(sel: pd.DataFrame) -> list[int]:
    """Seeds of these runs whose predictions went non-finite (NaN/inf) somewhere in the stream."""
    if "diverged" not in sel:
        return []
    return sorted(int(x) for x in sel.loc[sel["diverged"].astype(bool), "seed"])


def table_context(table: str, s: pd.DataFrame, col: Collection, figs: list[dict]) -> dict[str, Any]:
    """Template context for one table: protocol, rows (display text + sort keys), plots."""
    rows = []
    for rank, r in enumerate(s.to_dict("records"), 1):
        sel = col.runs[
            (col.runs["table"] == table) & (col.runs["model"] == r["model"]) & (col.runs["entry"] == r["entry"])
        ]
        vs = {}
        for b in BASELINES:
            d, p = r[f"delta_vs_{b}"], r[f"p_vs_{b}"]
            vs[b] = {
                "text": "–" if math.isnan(d) else f"{d:+.2f}",
                "p": "< 0.001" if p < 0.001 else f"= {_fmt(p, 3)}",
                "sig": bool(r[f"sig_vs_{b}"]),
                "key": _key(d),
            }
        rows.append(
            {
                "rank": rank,
                "entry": r["entry"],
                "model": r["model"],
                "n_seeds": r["n_seeds"],
                "seeds": r["seeds"],
                "error": _fmt(r["mean_error_mean"]),
                "error_std": _fmt(r["mean_error_std"]),
                "error_key": _key(r["mean_error_mean"]),
                "ci": "–"
                if math.isnan(r["mean_error_ci_low"])
                else f"[{r['mean_error_ci_low']:.2f}, {r['mean_error_ci_high']:.2f}]",
                "vs": vs,
                "ece": _fmt(r["ece_mean"]),
                "ece_key": _key(r["ece_mean"]),
                "forgetting": _fmt(r["forgetting_mean"]),
                "forgetting_std": _fmt(r["forgetting_std"]),
                "forgetting_key": _key(r["forgetting_mean"]),
                "adapt_mb": _fmt(r["adapt_mb_mean"]),
                "adapt_key": _key(r["adapt_mb_mean"]),
                "peak_mb": _fmt(r["peak_device_mb_mean"]),
                "peak_key": _key(r["peak_device_mb_mean"]),
                "ips": _fmt(r["images_per_s_mean"], 0),
                "ips_key": _key(r["images_per_s_mean"]),
                "diverged": diverged_seeds(sel),
                "configs": [{"seed": int(x.seed), "href": f"configs/{x.run_id}.json"} for x in sel.itertuples()],
            }
        )
    c = protocol(table, col)
    return {
        "key": table,
        "id": slug(table),
        "title": f"{c['stream']} · {c['setting']}",
        "protocol": c,
        "rows": rows,
        "figures": figs,
        "csv": f"csv/summary_{slug(table)}.csv",
    }
