"""`leaderboard --format latex|markdown`: the overview and detail tables as paste-ready booktabs LaTeX and GitHub
Markdown, checked against the leaderboard's own summary.csv.

Six real runs (digits-c, 16 images per domain): norm and source with seeds 0 and 1 at severity 5, and seed 0 at
severity 3 (a second benchmark, so the overview has two columns and an average). The LaTeX is compiled with pdflatex
(booktabs, graphicx) where it is installed, and always checked by a parser: balanced braces and math, one
\\toprule/\\midrule/\\bottomrule per table in that order, as many cells in every row as the column spec declares.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tta_bench.cli import main
from tta_bench.leaderboard.export import Cell, Table, latex_escape, markdown_escape, to_latex, to_markdown

SPECIALS = "a_b & c % d $ e # f {g} h ~ i ^ j \\ k < l > m | n * o ` p [q] ± Δ → é 中"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from tta_bench.config import RunConfig
    from tta_bench.runner import run

    root = tmp_path_factory.mktemp("export_runs")
    grid = [(m, s, 5) for m in ("norm", "source") for s in (0, 1)] + [(m, 0, 3) for m in ("norm", "source")]
    for method, seed, severity in grid:
        cfg = RunConfig(method=method, stream="digits-c", seed=seed, severity=severity, limit=16, batch_size=16,
                        out=str(root))  # fmt: skip
        run(cfg, quiet=True)
    return root


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    """The site (for summary.csv) and both exports of `runs`."""
    base = tmp_path_factory.mktemp("export_out")
    out = {"html": base / "site", "latex": base / "tex", "markdown": base / "md"}
    for fmt, folder in out.items():
        assert main(["leaderboard", "--runs", str(runs), "--format", fmt, "--out", str(folder)]) == 0
    return out


def summary(exported) -> pd.DataFrame:
    return pd.read_csv(exported["html"] / "csv" / "summary.csv")


# ------------------------------------------------------------------------------------------------ Markdown


def md_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table of `text` as rows of cells (the separator row included), escaped pipes kept in cells."""
    return [t for t, _ in md_blocks(text)]


def md_blocks(text: str) -> list[tuple[list[list[str]], str]]:
    """(table, the paragraph after it: its caption line) for every pipe table of `text`."""
    blocks = text.split("\n\n")
    out = []
    for i, b in enumerate(blocks):
        if b.startswith("|"):
            rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in b.strip().splitlines()]
            out.append((rows, blocks[i + 1] if i + 1 < len(blocks) else ""))
    return out


def unbold(cell: str) -> tuple[float, float | None, bool]:
    """(mean, std or None, bold) of a cell such as `**8.54** ± 0.12`."""
    m = re.fullmatch(r"(\*\*)?([-\d.]+)(\*\*)? ?(± ([\d.]+))?", cell)
    assert m, cell
    return float(m.group(2)), float(m.group(5)) if m.group(5) else None, bool(m.group(1))


def test_markdown_tables_are_well_formed_and_hold_the_summary_numbers(exported):
    text = (exported["markdown"] / "tables.md").read_text()
    tables = md_tables(text)
    s = summary(exported)
    keys = list(dict.fromkeys(s["table"]))
    assert len(keys) == 2 and len(tables) == 1 + len(keys)  # one overview (one task family), one detail per protocol
    for t in tables:
        n = len(t[0])
        assert all(len(row) == n for row in t), t  # every row has the header's column count
        assert all(re.fullmatch(r":?-{3,}:?", c) for c in t[1]), t[1]  # the separator row
    overview = tables[0]
    assert overview[0][0].lower() == "method" and overview[0][-1].lower() == "average"
    rows = {r[0]: r[1:] for r in overview[2:]}
    assert list(rows) == ["source", "norm"]  # baselines first, in this order
    used = set()
    for j in range(len(overview[0]) - 2):  # each benchmark column is one protocol's means ± std, best in bold
        cells = {m: unbold(rows[m][j]) for m in rows}
        match = [
            k
            for k in keys
            if all(
                abs(cells[m][0] - s[(s["table"] == k) & (s["entry"] == m)]["mean_error_mean"].iat[0]) < 0.006
                for m in rows
            )
        ]
        assert len(match) == 1, cells
        used.add(match[0])
        sel = s[s["table"] == match[0]].set_index("entry")
        for m, (_, std, bold) in cells.items():
            if sel.at[m, "n_seeds"] > 1:
                assert std == pytest.approx(sel.at[m, "mean_error_std"], abs=0.006)
            else:
                assert std is None
            assert bold == (sel.at[m, "mean_error_mean"] == sel["mean_error_mean"].min())
    assert used == set(keys)
    for m, cells in rows.items():  # the average over the two benchmarks
        want = s[s["entry"] == m]["mean_error_mean"].mean()
        assert unbold(cells[-1])[0] == pytest.approx(want, abs=0.006)
    avgs = {m: unbold(c[-1]) for m, c in rows.items()}
    assert [m for m, v in avgs.items() if v[2]] == [min(avgs, key=lambda m: avgs[m][0])]
    for t in tables[1:]:  # detail tables: ranked by error, the best in bold, numbers of summary.csv
        header = [h.lower() for h in t[0]]
        assert header[0] == "\\#" and "method" in header
        e = next(i for i, h in enumerate(header) if h.startswith("error"))
        vals = [(r[header.index("method")], unbold(r[e])) for r in t[2:]]
        means = [v[0] for _, v in vals]
        assert means == sorted(means) and vals[0][1][2] and not any(v[2] for _, v in vals[1:])
        caption = next(c for tt, c in md_blocks(text) if tt == t)
        key = next(k for k in keys if markdown_escape(k) in caption)
        sel = s[s["table"] == key].set_index("entry")
        for m, (mean, _, _) in vals:
            assert mean == pytest.approx(sel.at[m, "mean_error_mean"], abs=0.006)
    captions = [c for _, c in md_blocks(text)][1:]  # the protocol is each detail table's caption line, under it
    assert sorted(next(k for k in keys if markdown_escape(k) in c) for c in captions) == sorted(keys)


def test_markdown_renders_as_tables(exported):
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is not installed (structure checked above)")
    text = (exported["markdown"] / "tables.md").read_text()
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(text)
    kinds = [t.type for t in tokens]
    assert kinds.count("table_open") == len(md_tables(text))
    width = None
    for t in tokens:
        if t.type == "table_open":
            width, cells = None, 0
        elif t.type in ("th_open", "td_open"):
            cells += 1
        elif t.type == "tr_close":
            width = cells if width is None else width
            assert cells == width
            cells = 0
    strong = [t for t in tokens if t.type == "inline" and "**" in t.content]
    assert strong  # the best values are bold


# --------------------------------------------------------------------------------------------------- LaTeX


def check_latex(text: str) -> int:
    """Parse-level validation of exported LaTeX; returns the number of tables. Raises AssertionError on a fault."""
    plain = re.sub(r"\\[\\{}$&%#_]", "", text)  # escaped specials are text
    plain = "\n".join(line for line in plain.splitlines() if not line.lstrip().startswith("%"))
    depth = 0
    for ch in plain:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unbalanced braces"
    tables = re.findall(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", text, re.S)
    assert tables and text.count(r"\begin{table}") == len(tables) == text.count(r"\end{table}")
    for spec, body in tables:
        assert body.count(r"\toprule") == body.count(r"\midrule") == body.count(r"\bottomrule") == 1
        assert body.index(r"\toprule") < body.index(r"\midrule") < body.index(r"\bottomrule")
        rows = [r for r in re.sub(r"\\(top|mid|bottom)rule", "", body).split(r"\\") if r.strip()]
        assert len(rows) >= 2
        for r in rows:
            cells = re.split(r"(?<!\\)&", r)
            assert len(cells) == len(spec), (spec, r)
            for c in cells:
                assert re.sub(r"\\[\\{}$&%#_]", "", c).count("$") % 2 == 0, c  # math opened and closed
                assert not re.search(r"(?<!\\)[%#_^~]", re.sub(r"\$[^$]*\$", "", c)), c  # specials escaped
    captions = re.findall(r"\\caption\{(.*)\}\n", text)
    assert len(captions) == len(tables)
    return len(tables)


def pdflatex(tex: str, folder: Path) -> str:
    """Compile `tex` with pdflatex; returns the log (asserts a PDF came out)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "doc.tex").write_text(tex)
    r = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    log = (folder / "doc.log").read_text(errors="replace")
    assert r.returncode == 0 and (folder / "doc.pdf").stat().st_size > 0, log[-3000:]
    return log


DOC = (
    "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n%s\n\\end{document}\n"
)


def test_latex_is_booktabs_with_the_protocol_as_caption_and_compiles(exported, tmp_path):
    text = (exported["latex"] / "tables.tex").read_text()
    s = summary(exported)
    keys = list(dict.fromkeys(s["table"]))
    assert check_latex(text) == 1 + len(keys)
    captions = re.findall(r"\\caption\{(.*)\}\n", text)
    for k in keys:  # the full protocol key in its detail table's caption (escaped)
        assert sum(latex_escape(k) in c for c in captions) == 1
    files = sorted(p.name for p in exported["latex"].iterdir())
    assert "tables.tex" in files and len(files) == 2 + len(keys)  # all in one, and one file per table
    for p in exported["latex"].glob("*.tex"):
        if p.name != "tables.tex":
            assert check_latex(p.read_text()) == 1 and p.read_text() in text
    best = re.findall(r"\\textbf\{([\d.]+)\}", text)
    assert best and all(float(b) >= 0 for b in best)
    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex is not installed: the LaTeX was validated by the parser only")
    (tmp_path / "tex").mkdir()
    shutil.copyfile(exported["latex"] / "tables.tex", tmp_path / "tex" / "tables.tex")
    log = pdflatex(DOC % "\\input{tables.tex}", tmp_path / "tex")
    assert "Overfull \\hbox" not in log and "Undefined control sequence" not in log


def test_special_characters_are_escaped(tmp_path):
    assert latex_escape("a_b&c%d$e#f{g}h") == r"a\_b\&c\%d\$e\#f\{g\}h"
    assert latex_escape("~^\\") == r"\textasciitilde{}\textasciicircum{}\textbackslash{}"
    assert latex_escape("± Δ é") == r"$\pm$ $\Delta$ e"
    assert markdown_escape("a|b *c* _d_ `e` [f]\nnext") == r"a\|b \*c\* \_d\_ \`e\` \[f\] next"
    t = Table(
        name="hostile",
        title=SPECIALS,
        caption=SPECIALS,
        header=["method", SPECIALS, "value"],
        rows=[[Cell(SPECIALS), Cell("x"), Cell("1.50 ± 0.25", best=True)], [Cell("b"), Cell(SPECIALS, best=True),
              Cell("-2.00")]],
    )  # fmt: skip
    tex = to_latex(t)
    assert check_latex(tex) == 1
    assert r"\textbf{1.50} $\pm$ 0.25" in tex and r"$-$2.00" in tex  # bold mean, not its std; a sign as math
    md = to_markdown(t)
    table = md_tables(md)[0]
    assert len(table) == 4 and all(len(r) == 3 for r in table)
    assert table[2][2] == "**1.50** ± 0.25" and table[2][0] == markdown_escape(SPECIALS)
    if shutil.which("pdflatex"):
        log = pdflatex(DOC % tex, tmp_path / "tex")
        assert "Undefined control sequence" not in log


def test_conflicts_are_named_in_the_exports_and_bad_input_exits_2(runs, tmp_path, capsys):
    other = tmp_path / "host-b"
    first = sorted(p.parent for p in runs.glob("*/done"))[0]
    copy = shutil.copytree(first, other / first.name)
    s = json.loads((copy / "summary.json").read_text())
    s["mean_error"] += 1.0
    (copy / "summary.json").write_text(json.dumps(s))
    assert (
        main(["leaderboard", "--runs", str(runs), str(other), "--format", "markdown", "--out", str(tmp_path / "md")])
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and first.name in out
    text = (tmp_path / "md" / "tables.md").read_text()
    assert text.startswith("> Warning: 1 run id(s) have copies with different results") and first.name in text
    (tmp_path / "file").write_text("x")
    assert main(["leaderboard", "--runs", str(runs), "--format", "latex", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", "--runs", str(runs), "--format", "pdf"])
    assert e.value.code == 2
