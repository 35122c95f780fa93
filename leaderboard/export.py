"""Paste-ready tables: the leaderboard's overview and detail tables as booktabs LaTeX or GitHub Markdown.

    python -m tta_bench leaderboard --runs runs/ --format latex     # -> leaderboard_tables/tables.tex, ...
    python -m tta_bench leaderboard --runs runs/ --format markdown  # -> leaderboard_tables/tables.md, ...

The tables are the page's (`tta_bench.leaderboard.overview`, from the numbers of `leaderboard.stats.summarize`):
one overview per task family (methods × benchmarks, the headline metric's mean ± std over seeds, the best of each
column in bold, an average column where there are two benchmarks or more), then one detail table per protocol
(ranked, with CI, paired differences against source/norm, ECE, forgetting, memory and speed where measured). Each
carries its protocol as its caption.

Both renderers draw one neutral form (`Table`: title, caption, header, rows of `Cell(text, best)`), so the LaTeX and
the Markdown always hold the same text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tta_bench.leaderboard import overview
from tta_bench.leaderboard.collect import Collection, printable

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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "table"


def from_page(t: overview.Table, details: list[overview.Table] = ()) -> Table:
    """A table of the page (`leaderboard.overview`) in export form. A detail table's caption is its protocol and full
    key, then its notes; an overview's is its metric and, per benchmark column, the detail table it summarizes."""
    if t.key:
        caption = f"{t.caption}. Protocol key: {t.key}." + "".join(f" {n}" for n in t.notes)
        name = f"detail_{t.id}"
    else:
        by_anchor = {f"#{d.id}": d for d in details}
        legend = "; ".join(
            f"{head}: {by_anchor[link].title}"
            for head, link in zip(t.header[1:], t.links)
            if link in by_anchor and by_anchor[link].title != head  # a heading that is not already the full title
        )
        text = t.caption.replace("; a column heading links to its detail table", "")  # no links on paper
        caption = text + (f". Benchmarks (protocols in their detail tables): {legend}." if legend else ".")
        name = "overview_" + _slug(t.id.removeprefix("overview-"))
    rows = [[Cell(c.text, c.best) for c in row] for row in t.rows]
    return Table(name, t.title, caption, list(t.header), rows)


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
    """The page's overview tables, then its detail tables (page order), in export form."""
    details = overview.detail_tables(col, summary)
    return [from_page(t, details) for t in overview.overview_tables(col, summary)] + [from_page(t) for t in details]


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
