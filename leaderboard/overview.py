"""The page's tables as plain values, for the HTML page and for exporters (LaTeX, Markdown):

- `overview_tables(col, summary=None) -> list[Table]`: one matrix per task family (rows: methods by their short
  names; columns: benchmark = stream × model × setting, one per detail table and model; cells: the family's headline
  metric, mean ± std over seeds, the best of each column marked, a link to the detail table), plus an average column
  where a family has two columns or more (they share the headline metric by construction);
- `detail_tables(col, summary=None) -> list[Table]`: one per protocol group, in the page's order (task family, then
  stream order, then setting), titled in words, its protocol as a one-line caption and the full key.

A `Table` holds text (what a reader sees) and per cell its value, best mark, link and tooltip, so an exporter
writes `header` and `[c.text for c in row]` and may bold `c.best`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tta_bench import rundir
from tta_bench.leaderboard import names
from tta_bench.leaderboard.collect import Collection, has_severity
from tta_bench.leaderboard.stats import summarize


@dataclass
class Cell:
    text: str
    value: float | None = None
    best: bool = False
    href: str | None = None  # "#<detail table id>" on the page
    title: str = ""  # tooltip: full options, seeds, why a value is missing


@dataclass
class Table:
    id: str  # the page anchor (detail tables: `site.slug(key)`)
    title: str  # in words, e.g. "CIFAR-10-C · ResNet-20 · continual · severity 5 · 1,000/domain"
    caption: str  # the protocol (detail) or the metric and how it is aggregated (overview), one line
    header: list[str]
    rows: list[list[Cell]]  # first cell of a row: its label (a method's short name)
    notes: list[str] = field(default_factory=list)
    key: str = ""  # detail tables: the full protocol key
    family: str = ""  # the task family (headline metric's family name)
    links: list[str] = field(default_factory=list)  # overview: per benchmark column, the detail table's anchor


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def headline_key(s: pd.DataFrame) -> str:
    """The key of the metric ranking a table's summary rows (`headline` column: comma-separated, first ranks)."""
    return str(s["headline"].iat[0]).split(",")[0] if "headline" in s and len(s) else "mean_error"


def samples_words(cfg: dict[str, Any]) -> str:
    """`1,000/domain` (or `8–16/domain`, or `1,200 images` for a one-domain stream such as CCC)."""
    counts = [int(v) for v in (cfg.get("samples_per_domain") or {}).values()]
    if not counts:
        limit = cfg["config"].get("limit")
        return f"{limit:,}/domain" if limit is not None else "all images"
    if len({k.split("/", 1)[-1] for k in cfg.get("samples_per_domain", {})}) == 1:
        return f"{sum(counts):,} images"
    lo, hi = min(counts), max(counts)
    return f"{lo:,}/domain" if lo == hi else f"{lo:,}–{hi:,}/domain"


def table_title(table: str, col: Collection) -> str:
    """A table's title in words: stream · model(s) · setting · severity · samples (· rounds, when more than one)."""
    rids = col.runs.loc[col.runs["table"] == table, "run_id"].tolist()
    cfg = col.configs[rids[0]]
    c = cfg["config"]
    models = " / ".join(names.model_name(m) for m in dict.fromkeys(col.configs[r]["config"]["model"] for r in rids))
    parts = [names.stream_name(c["stream"]), models, c["setting"]]
    if has_severity(cfg) and c.get("severity") is not None:
        parts.append(f"severity {c['severity']}")
    parts.append(samples_words(cfg))
    if int(c.get("rounds", 1)) > 1:
        parts.append(f"{c['rounds']} rounds")
    return " · ".join(parts)


def table_order(col: Collection, summary: pd.DataFrame) -> list[str]:
    """Table keys in page order: task family (headline metric), then stream order, setting, then key."""

    def key(table: str) -> tuple:
        s = summary[summary["table"] == table]
        first = col.runs[col.runs["table"] == table].iloc[0]
        return (names.family_key(headline_key(s)), names.order_key(first["stream"], first["setting"]), table)

    tables = list(dict.fromkeys(col.runs["table"])) if not col.runs.empty else []
    return sorted(tables, key=key)


def cell_text(mean: float, std: float, digits: int = 2) -> str:
    if _nan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if _nan(std) else f" ± {std:.{digits}f}")


def _best(values: list[float | None], higher: bool) -> float | None:
    vals = [v for v in values if not _nan(v)]
    return (max(vals) if higher else min(vals)) if len(set(vals)) > 1 else None  # equal values: no best


def row_order(labels: list[str], score: dict[str, float], higher: bool) -> list[str]:
    """Baselines (source, norm) first, then the methods by their mean score over the columns they have, best first."""
    base = [b for b in names.BASELINE_ORDER if b in labels]
    rest = [x for x in labels if x not in base]
    rest.sort(key=lambda x: (math.inf if _nan(score.get(x)) else (-score[x] if higher else score[x]), x))
    return base + rest


def overview_tables(
    col: Collection, summary: pd.DataFrame | None = None, ids: dict[str, str] | None = None
) -> list[Table]:
    """One matrix per task family (see module doc). `ids`: detail table key -> page anchor (default `site.slug`)."""
    from tta_bench.leaderboard.site import slug

    if col.runs.empty:
        return []
    summary = summarize(col.runs, col.domains) if summary is None else summary
    short = names.short_names(col.runs, col.configs)
    order = table_order(col, summary)
    titles = disambiguated_titles(order, col)
    families: dict[str, list[tuple[str, str]]] = {}
    for t in order:
        s = summary[summary["table"] == t]
        for m in dict.fromkeys(s["model"]):
            families.setdefault(headline_key(s), []).append((t, m))
    out = []
    for hkey, columns in families.items():
        metric = rundir.metric(hkey)
        heads = []
        for t, m in columns:
            first = col.runs[col.runs["table"] == t].iloc[0]
            heads.append(f"{names.stream_name(first['stream'])} · {names.model_name(m)} · {first['setting']}")
        dup = [heads.count(h) > 1 for h in heads]
        for i in range(len(heads)):  # two columns of one stream × model × setting: the full titles tell them apart
            if dup[i]:
                heads[i] = titles[columns[i][0]] if len({c[1] for c in columns if c[0] == columns[i][0]}) == 1 else (
                    f"{titles[columns[i][0]]} · {names.model_name(columns[i][1])}")  # fmt: skip
        values: dict[str, dict[int, tuple[float, float, str]]] = {}
        for j, (t, m) in enumerate(columns):
            s = summary[(summary["table"] == t) & (summary["model"] == m)]
            for r in s.to_dict("records"):
                label = short[(t, m, r["entry"])]["short"]
                tip = f"{short[(t, m, r['entry'])]['full']}; seeds {r['seeds']}"
                values.setdefault(label, {})[j] = (r.get(f"{hkey}_mean"), r.get(f"{hkey}_std"), tip)
        avg = len(columns) > 1
        avgs = {
            lbl: (sum(v[j][0] for j in range(len(columns))) / len(columns))
            if all(j in v and not _nan(v[j][0]) for j in range(len(columns)))
            else math.nan
            for lbl, v in values.items()
        }
        known = {lbl: [x[0] for x in v.values() if not _nan(x[0])] for lbl, v in values.items()}
        mean_any = {lbl: sum(k) / len(k) if k else math.nan for lbl, k in known.items()}
        labels = row_order(list(values), avgs if avg and any(not _nan(a) for a in avgs.values()) else mean_any,
                           metric.higher_is_better)  # fmt: skip
        best = [_best([values[lbl].get(j, (None,))[0] for lbl in labels], metric.higher_is_better)
                for j in range(len(columns))]  # fmt: skip
        best_avg = _best([avgs[lbl] for lbl in labels], metric.higher_is_better) if avg else None
        rows = []
        for lbl in labels:
            row = [Cell(lbl)]
            for j, (t, _m) in enumerate(columns):
                mean, std, tip = values[lbl].get(j, (math.nan, math.nan, "not run on this benchmark"))
                anchor = (ids or {}).get(t) or slug(t)
                is_best = best[j] is not None and not _nan(mean) and mean == best[j]
                row.append(Cell(cell_text(mean, std), None if _nan(mean) else float(mean), is_best, f"#{anchor}", tip))
            if avg:
                a = avgs[lbl]
                row.append(Cell("–" if _nan(a) else f"{a:.2f}", None if _nan(a) else float(a),
                                best_avg is not None and not _nan(a) and a == best_avg, None,
                                "" if not _nan(a) else "not run on every benchmark of this table"))  # fmt: skip
            rows.append(row)
        fam = names.family_name(hkey)
        out.append(
            Table(
                id=f"overview-{hkey}",
                title=f"{fam}: {metric.label} {metric.unit} {metric.arrow}".replace("  ", " "),
                caption=f"{metric.label} ({metric.meaning}), mean ± std over seeds; best of each column in bold; "
                "a column heading links to its detail table"
                + ("; average: mean over the columns, for methods run on all of them" if avg else ""),
                header=["method", *heads, *(["average"] if avg else [])],
                rows=rows,
                family=fam,
                links=[f"#{(ids or {}).get(t) or slug(t)}" for t, _ in columns],
            )
        )
    return out


def disambiguated_titles(order: list[str], col: Collection) -> dict[str, str]:
    """table key -> title in words; tables sharing a title get the protocol key parts that differ appended."""
    titles = {t: table_title(t, col) for t in order}
    for title in set(titles.values()):
        same = [t for t in order if titles[t] == title]
        if len(same) > 1:
            parts = [t.split("/") for t in same]
            diff = [i for i in range(max(map(len, parts))) if len({tuple(p[i : i + 1]) for p in parts}) > 1]
            for t, p in zip(same, parts):
                titles[t] = title + " · " + " · ".join(p[i] for i in diff if i < len(p))
    return titles


def detail_tables(col: Collection, summary: pd.DataFrame | None = None) -> list[Table]:
    """One table per protocol group in page order: rank, method (short name), model, seeds and the result columns
    of the page (headline first), titled in words, the protocol as caption, notes as on the page."""
    from tta_bench.leaderboard import site

    if col.runs.empty:
        return []
    summary = summarize(col.runs, col.domains) if summary is None else summary
    short = names.short_names(col.runs, col.configs)
    titles = disambiguated_titles(table_order(col, summary), col)
    out = []
    for t in table_order(col, summary):
        s = summary[summary["table"] == t].reset_index(drop=True)
        columns, notes = site.result_columns(s, col, t)
        proto = site.protocol(t, col)
        rows = []
        for i, r in enumerate(s.to_dict("records")):
            names_ = short[(t, r["model"], r["entry"])]
            rows.append(
                [Cell(str(i + 1)), Cell(names_["short"], title=names_["full"]), Cell(names.model_name(r["model"])),
                 Cell(str(r["n_seeds"]), title=f"seeds {r['seeds']}")]
                + [Cell(c["cells"][i]["text"] + (f" {c['cells'][i]['small']}" if c["cells"][i].get("small") else ""),
                        best=bool(c["cells"][i].get("best"))) for c in columns]
            )  # fmt: skip
        out.append(
            Table(
                id=site.slug(t),
                title=titles[t],
                caption="; ".join(f"{k}: {v}" for k, v in proto.items() if k in CAPTION),
                header=["#", "method", "model", "seeds", *(c["label"] for c in columns)],
                rows=rows,
                notes=notes,
                key=t,
                family=names.family_name(headline_key(s)),
            )
        )
    return out


# Protocol lines a detail table's one-line caption keeps (the page shows all of them in a collapsed block).
CAPTION = ("setting", "severity", "samples per domain", "batch size", "rounds", "precision", "stream options", "order")
