"""Paste-ready tables: the leaderboard's overview and detail tables as booktabs LaTeX or GitHub Markdown.

    python -m tta_bench leaderboard --runs runs/ --format latex     # -> leaderboard_tables/tables.tex, ...
    python -m tta_bench leaderboard --runs runs/ --format markdown  # -> leaderboard_tables/tables.md, ...

The tables are those of the page, built from the same numbers (`tta_bench.leaderboard.stats.summarize`):

- one **overview** per headline metric (task family): rows are methods, columns benchmarks (stream · model ·
  setting, one per protocol), cells the headline metric's mean ± std over seeds, the best of each column in bold,
  and an average column where there are two benchmarks or more (over the methods that have a value in every
  column);
- one **detail** table per protocol: every entry ranked by the headline metric, with its 95 % CI, the paired
  differences against `source`/`norm` (* = p < ALPHA), ECE, forgetting, memory and throughput where measured.

Each table carries its protocol as its caption. Both renderers draw from one neutral form (`Table`: header, rows of
`Cell`, caption), so the LaTeX and the Markdown always hold the same numbers.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tta_bench import rundir
from tta_bench.leaderboard.collect import Collection, has_severity, printable, protocol_opts, samples_label
from tta_bench.leaderboard.stats import ALPHA, BASELINES

SUFFIX = {"latex": ".tex", "markdown": ".md"}


@dataclass
class Cell:
    """One table cell: `text` as a reader sees it (`8.54 ± 0.12`), `best` when it is the best of its column (its
    mean is set in bold)."""

    text: str
    best: bool = False


@dataclass
class Table:
    """A table in neutral form: what both renderers draw."""

    name: str  # file stem: `overview_<metric>` or `detail_<slug>`
    title: str  # in words, first sentence of the caption
    caption: str  # the protocol and how to read the cells
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)

    @property
    def align(self) -> str:
        """One letter per column: r where every cell is a number, a dash or an interval, else l."""
        return (
            "".join(
                "r" if all(re.match(r"^[-+−–\[]|^\d", c.text) for c in col) and col else "l"
                for col in zip(*self.rows, strict=False)
            )
            if self.rows
            else "l" * len(self.header)
        )


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, digits: int = 2) -> str:
    return "–" if _missing(v) else f"{float(v):.{digits}f}"


def _mean_std(mean: Any, std: Any, digits: int = 2) -> str:
    """`8.54 ± 0.12` (`8.54` without a std, `–` without a mean)."""
    return _fmt(mean, digits) + ("" if _missing(mean) or _missing(std) else f" ± {_fmt(std, digits)}")


def _best(values: list[float], higher: bool) -> float | None:
    """The best of `values` (NaN ignored); None when they do not differ (a column of equal values has no best)."""
    vals = [v for v in values if not _missing(v)]
    if len(set(vals)) < 2:
        return None
    return max(vals) if higher else min(vals)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "table"


def table_slug(table: str) -> str:
    """File-name-safe id of a protocol key, the one of the site's csv/summary_<slug>.csv: `<stream>_<setting>_<6 hex
    of the key's sha256>`."""
    stream, setting = table.split("/")[:2]
    return re.sub(r"[^A-Za-z0-9-]+", "-", f"{stream}_{setting}") + "_" + hashlib.sha256(table.encode()).hexdigest()[:6]


def _first_config(table: str, col: Collection) -> dict[str, Any]:
    rid = col.runs.loc[col.runs["table"] == table, "run_id"].iat[0]
    return col.configs[rid]


def protocol_words(table: str, col: Collection) -> str:
    """A table's protocol in words: stream, setting, severity, batch size, images per domain, rounds, precision,
    data fingerprint and stream options (what makes runs comparable; `collect.PROTOCOL`)."""
    cfg = _first_config(table, col)
    c = cfg["config"]
    n = samples_label(cfg)[1:]
    parts = [
        f"stream {c['stream']}",
        f"setting {c['setting']}",
        f"severity {c['severity']}" if has_severity(cfg) else "",
        f"batch size {c['batch_size']}",
        f"{n} images per domain" if n != "all" else "all images of each domain",
        f"{c['rounds']} round{'s' if c['rounds'] != 1 else ''}",
        f"precision {c['precision']}",
    ]
    opts = ", ".join(f"{k}={v}" for k, v in sorted(protocol_opts(cfg).items()) if v is not None)
    parts.append(f"stream options {opts}" if opts else "")
    fp = cfg.get("data_fingerprint")
    parts.append(f"data fingerprint {table.split('/data-')[1].split('/')[0]}" if fp and "/data-" in table else "")
    return ", ".join(p for p in parts if p)


def short_title(table: str, model: str | None, col: Collection) -> str:
    """`digits-c · small-cnn · continual · severity 5` (the model left out when None)."""
    cfg = _first_config(table, col)
    c = cfg["config"]
    parts = [c["stream"], model or "", c["setting"], f"severity {c['severity']}" if has_severity(cfg) else ""]
    return " · ".join(p for p in parts if p)


def _disambiguate(titles: list[str], keys: list[str]) -> list[str]:
    """Titles shared by several tables get the protocol key parts that tell them apart appended."""
    out = list(titles)
    for t in set(titles):
        idx = [i for i, x in enumerate(titles) if x == t]
        if len(idx) > 1:
            parts = [keys[i].split("/") for i in idx]
            diff = [j for j in range(max(map(len, parts))) if len({tuple(p[j : j + 1]) for p in parts}) > 1]
            for i, p in zip(idx, parts):
                out[i] += " · " + " · ".join(p[j] for j in diff if j < len(p))
    return out


def headline(s: pd.DataFrame) -> tuple[rundir.Metric, ...]:
    """The headline metrics of one table's summary rows (`headline` column of stats.summarize)."""
    keys = str(s["headline"].iat[0]).split(",") if "headline" in s and len(s) else ["mean_error"]
    return tuple(rundir.metric(k) for k in keys)


def _order(tables: list[str]) -> list[str]:
    return list(dict.fromkeys(tables))


def overview_tables(summary: pd.DataFrame, col: Collection) -> list[Table]:
    """One methods × benchmarks matrix per headline metric (task family); see the module docstring."""
    if summary.empty:
        return []
    families: dict[str, list[tuple[str, str]]] = {}  # headline key -> [(table, model)] columns
    for table in _order(col.runs["table"].tolist()):
        s = summary[summary["table"] == table]
        key = headline(s)[0].key
        for model in dict.fromkeys(s["model"]):
            families.setdefault(key, []).append((table, model))
    return [_overview(key, columns, summary, col) for key, columns in families.items()]


def _overview(key: str, columns: list[tuple[str, str]], summary: pd.DataFrame, col: Collection) -> Table:
    """The overview of one headline metric `key` over `columns` (table, model)."""
    m = rundir.metric(key)
    titles = _disambiguate([short_title(t, mo, col) for t, mo in columns], [t for t, _ in columns])
    values: dict[str, list[tuple[float, float]]] = {}  # entry -> (mean, std) per column
    for i, (table, model) in enumerate(columns):
        s = summary[(summary["table"] == table) & (summary["model"] == model)]
        for r in s.to_dict("records"):
            cell = (r.get(f"{key}_mean", math.nan), r.get(f"{key}_std", math.nan))
            values.setdefault(r["entry"], [(math.nan, math.nan)] * len(columns))[i] = cell
    average = len(columns) > 1
    avg = {e: (sum(v[0] for v in cells) / len(cells) if not any(_missing(v[0]) for v in cells) else math.nan)
           for e, cells in values.items()}  # fmt: skip
    sign = -1 if m.higher_is_better else 1

    def rank(e: str) -> tuple:
        known = [v[0] for v in values[e] if not _missing(v[0])]
        score = avg[e] if not _missing(avg[e]) else sum(known) / len(known) if known else math.inf * sign
        return (BASELINES.index(e) if e in BASELINES else len(BASELINES), _missing(avg[e]), sign * score, e)

    entries = sorted(values, key=rank)
    best = [_best([values[e][i][0] for e in entries], m.higher_is_better) for i in range(len(columns))]
    best_avg = _best([avg[e] for e in entries], m.higher_is_better) if average else None
    rows = []
    for e in entries:
        row = [Cell(e)]
        for i, (mean, std) in enumerate(values[e]):
            row.append(Cell(_mean_std(mean, std), best[i] is not None and mean == best[i]))
        if average:
            row.append(Cell(_fmt(avg[e]), best_avg is not None and avg[e] == best_avg))
        rows.append(row)
    legend = "; ".join(f"{titles[i]}: {protocol_words(t, col)}" for i, (t, _) in enumerate(columns))
    caption = (
        f"{m.label} ({m.unit or 'value'}, {'higher' if m.higher_is_better else 'lower'} is better; {m.meaning}), "
        f"mean ± std over seeds; best per column in bold"
        + (", average over the benchmarks where a method has every column" if average else "")
        + f". Benchmarks: {legend}."
    )
    return Table(
        name=f"overview_{_slug(key)}",
        title=f"Overview: {m.label} by method and benchmark",
        caption=caption,
        header=["Method", *titles, *(["Average"] if average else [])],
        rows=rows,
    )


def detail_tables(summary: pd.DataFrame, col: Collection) -> list[Table]:
    """One ranked table per protocol (the page's tables, in its order); see the module docstring."""
    if summary.empty:
        return []
    tables = _order(col.runs["table"].tolist())
    titles = _disambiguate([short_title(t, None, col) for t in tables], tables)
    return [
        _detail(t, title, summary[summary["table"] == t].reset_index(drop=True), col)
        for t, title in zip(tables, titles)
    ]


def _detail(table: str, title: str, s: pd.DataFrame, col: Collection) -> Table:
    """The detail table of protocol `table` from its summary rows `s` (ranked)."""
    head = headline(s)
    many_models = s["model"].nunique() > 1
    header = ["#", "Method", *(["Model"] if many_models else []), "Seeds"]
    cols: list[list[Cell]] = []

    def metric_column(m: rundir.Metric, with_std: bool = True, digits: int = 2) -> None:
        mean = s[f"{m.key}_mean"] if f"{m.key}_mean" in s else pd.Series([math.nan] * len(s))
        std = s[f"{m.key}_std"] if f"{m.key}_std" in s else pd.Series([math.nan] * len(s))
        if all(_missing(v) for v in mean):
            return
        best = _best(list(mean), m.higher_is_better)
        header.append(m.title)
        cols.append(
            [
                Cell(_mean_std(v, sd if with_std else math.nan, _digits(v, digits)), v == best)
                for v, sd in zip(mean, std)
            ]
        )

    for m in head:
        metric_column(m)
    first = head[0]
    if f"{first.key}_ci_low" in s:
        header.append("95 % CI")
        cols.append(
            [
                Cell("–" if _missing(lo) else f"[{lo:.2f}, {hi:.2f}]")
                for lo, hi in zip(s[f"{first.key}_ci_low"], s[f"{first.key}_ci_high"])
            ]
        )
    if first.key != "mean_error":
        metric_column(rundir.metric("mean_error"))
    what = "error" if s["paired_metric"].iat[0] == "error" else first.label
    for b in BASELINES:
        if b in set(s["entry"]):
            header.append(f"Δ {what} vs {b}")
            cols.append(
                [
                    Cell(("–" if _missing(d) else f"{d:+.2f}") + ("*" if sig else ""))
                    for d, sig in zip(s[f"delta_vs_{b}"], s[f"sig_vs_{b}"])
                ]
            )
    for m in rundir.METRICS:  # the optional result columns, in the page's order
        if not m.column or m in head:
            continue
        if m.key == "worst_window_error" and not _differs(s, m.key, "mean_error"):
            continue  # one window per run: the worst window is the error itself
        metric_column(m, with_std=m.std, digits=m.digits)
    kept = [i for i, c in enumerate(cols) if any(x.text != "–" for x in c)]  # a column of "–" says nothing
    header = header[: len(header) - len(cols)] + [header[len(header) - len(cols) + i] for i in kept]
    cols = [cols[i] for i in kept]
    rows = []
    for i, r in enumerate(s.to_dict("records")):
        row = [Cell(str(i + 1)), Cell(str(r["entry"])), *([Cell(str(r["model"]))] if many_models else [])]
        row.append(Cell(str(r["n_seeds"])))
        rows.append(row + [c[i] for c in cols])
    caption = (
        f"{protocol_words(table, col)}. Ranked by {first.label} ({first.meaning}); metrics are mean ± std over "
        f"seeds, best per column in bold; 95 % CI: Student t over seeds"
        + (
            f"; Δ: mean paired per-domain difference against the baseline in percentage points, "
            f"* = p < {ALPHA:g} (Wilcoxon signed-rank)"
            if any(b in set(s["entry"]) for b in BASELINES)
            else ""
        )
        + f". Protocol key: {table}."
    )
    return Table(f"detail_{table_slug(table)}", title, caption, header, rows)


def _digits(v: Any, digits: int) -> int:
    """Decimals for `v`: `digits`, or 2 for a value under 10 shown without decimals (0.54 images/s, not 1)."""
    return digits if digits or _missing(v) or abs(v) >= 10 else 2


def _differs(s: pd.DataFrame, a: str, b: str) -> bool:
    """Whether columns `<a>_mean` and `<b>_mean` differ in some row (both present)."""
    if f"{a}_mean" not in s or f"{b}_mean" not in s:
        return False
    return any(
        not _missing(x) and not _missing(y) and abs(x - y) > 1e-9 for x, y in zip(s[f"{a}_mean"], s[f"{b}_mean"])
    )


# ---------------------------------------------------------------------------------------------------- LaTeX

# Characters the tables hold that plain pdflatex (utf8 input, OT1/T1 fonts) cannot set, as LaTeX.
_LATEX_UNICODE = {
    "±": r"$\pm$", "Δ": r"$\Delta$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "→": r"$\rightarrow$",
    "·": r"$\cdot$", "–": "--", "—": "---", "…": r"\ldots{}", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$",
    "µ": r"$\mu$", "−": "-", "\u00a0": "~",
}  # fmt: skip
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """`text` as LaTeX that prints it: special characters escaped, the symbols the tables use as math, other
    non-ASCII characters as their ASCII decomposition (é -> e) or `?` (pdflatex cannot set them all)."""
    out = []
    for ch in str(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ch in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch if ch.isprintable() else " ")
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(latex_escape(plain) if plain else "?")
    return "".join(out)


def _latex_cell(c: Cell) -> str:
    """A cell as LaTeX: a best value's mean in bold (not its ± std), a leading sign as math."""
    mean, pm, std = c.text.partition(" ± ")
    text = re.sub(r"^([+-])(?=\d)", r"$\1$", latex_escape(mean))
    text = rf"\textbf{{{text}}}" if c.best and mean != "–" else text
    return text + (rf" $\pm$ {latex_escape(std)}" if pm else "")


def to_latex(t: Table) -> str:
    """A booktabs `table` float: caption (title + protocol), label, \\toprule/\\midrule/\\bottomrule; a table wider
    than the text is scaled down to the text width (graphicx's \\resizebox), a narrower one kept as it is."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(t.title)}. {latex_escape(t.caption)}}}",
        rf"\label{{tab:{_slug(t.name)}}}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{t.align}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in t.header) + r" \\",
        r"\midrule",
        *(" & ".join(_latex_cell(c) for c in row) + r" \\" for row in t.rows),
        r"\bottomrule",
        r"\end{tabular}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


LATEX_PREAMBLE = (
    "% tta_bench leaderboard tables (python -m tta_bench leaderboard --format latex).\n"
    "% Needs \\usepackage{booktabs} and \\usepackage{graphicx} in the preamble; paste a table or \\input{tables.tex}.\n"
)


# ------------------------------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\|*_`<>\[\]#])")


def markdown_escape(text: str) -> str:
    """`text` as GitHub Markdown table-cell text: the characters Markdown or the table would read escaped, line
    breaks as spaces."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _md_cell(c: Cell) -> str:
    """A cell as Markdown: a best value's mean in bold (not its ± std)."""
    mean, pm, std = c.text.partition(" ± ")
    text = f"**{markdown_escape(mean)}**" if c.best and mean != "–" else markdown_escape(mean)
    return text + (f" ± {markdown_escape(std)}" if pm else "")


def to_markdown(t: Table) -> str:
    """A GitHub pipe table under a bold title line, the protocol as the caption line below it."""
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        f"**{markdown_escape(t.title)}**",
        "",
        "| " + " | ".join(markdown_escape(h) for h in t.header) + " |",
        "| " + " | ".join(sep[a] for a in t.align) + " |",
        *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows),
        "",
        f"*{markdown_escape(t.caption)}*",
    ]
    return "\n".join(lines) + "\n"


RENDER = {"latex": to_latex, "markdown": to_markdown}


def tables(summary: pd.DataFrame, col: Collection) -> list[Table]:
    """The overview tables, then the detail tables (page order)."""
    return overview_tables(summary, col) + detail_tables(summary, col)


def notes(col: Collection) -> list[str]:
    """What the tables leave out and why (conflicting copies of a run, unreadable folders), in words."""
    out = []
    if col.conflicts:
        ids = ", ".join(c.run_id for c in col.conflicts[:10]) + (" ..." if len(col.conflicts) > 10 else "")
        out.append(
            f"Warning: {len(col.conflicts)} run id(s) have copies with different results and are left out of these "
            f"tables: {ids} (see the leaderboard's report)."
        )
    other = len(col.unreadable) - sum(len(g) for c in col.conflicts for g in c.folders)
    if other > 0:
        out.append(f"{other} unreadable run folder(s) were skipped.")
    return out


def write(col: Collection, fmt: str, out: Path) -> list[Path]:
    """Write the tables of `col` as `fmt` ("latex" or "markdown") into the (new, empty) folder `out`: one file per
    table (`overview_<metric>`, `detail_<protocol>`) and `tables<suffix>` with all of them in order. Returns the
    files written."""
    from tta_bench.leaderboard.stats import summarize

    summary = summarize(col.runs, col.domains) if not col.runs.empty else pd.DataFrame()
    all_tables = tables(summary, col)
    render, suffix = RENDER[fmt], SUFFIX[fmt]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in all_tables:
        path = out / f"{t.name}{suffix}"
        path.write_text(render(t), encoding="utf-8")
        written.append(path)
    said = notes(col)
    if fmt == "latex":
        head = LATEX_PREAMBLE + "".join(f"% {printable(n)}\n" for n in said)
        body = "\n".join(to_latex(t) for t in all_tables)
    else:
        head = "".join(f"> {markdown_escape(n)}\n\n" for n in said)
        body = "\n".join(to_markdown(t) for t in all_tables)
    path = out / f"tables{suffix}"
    path.write_text(head + ("\n" if head and fmt == "latex" else "") + body, encoding="utf-8")
    return [path, *written]
