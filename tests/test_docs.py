"""The docs are kept honest: generated pages match the code, every method and stream has a page, every method option
has a meaning, every relative link resolves, and the code of the guides runs.

Guides mark runnable code with an HTML comment on the line before a ```python fence (invisible on the rendered page):
`<!-- docs-test: run -->` (the block runs, after the page's earlier marked blocks, in one fresh interpreter whose
working folder is a temporary one) or `<!-- docs-test: file PATH -->` (the block is written to PATH in that folder
first; a file under `methods/`, `corruptions/` or `tta_bench/data/` is found by its package as if it sat in the
repository's folder, the way tests/test_extending.py adds one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from tta_bench import docs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ("add-a-method", "add-a-stream", "add-a-metric", "add-a-run-option")
MARK = re.compile(r"^<!-- docs-test: (run|file (\S+)) -->\s*$")
# Packages a guide's file may extend: its path prefix in the temporary folder -> the package to append it to.
PACKAGES = {
    "methods/": "tta_bench.methods",
    "corruptions/": "tta_bench.corruptions",
    "tta_bench/data/": "tta_bench.data",
}


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return docs.pages(DOCS)


def hand_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "_src" not in p.parts)]


def marked_blocks(text: str) -> list[tuple[str, str | None, str]]:
    """(kind, path, code) of every marked ```python block of a page, in page order."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = MARK.match(lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            assert j < len(lines) and lines[j].strip() == "```python", f"marker on line {i + 1} not before ```python"
            end = next(k for k in range(j + 1, len(lines)) if lines[k].strip() == "```")
            kind = "run" if m.group(1) == "run" else "file"
            out.append((kind, m.group(2), "\n".join(lines[j + 1 : end]) + "\n"))
            i = end
        i += 1
    return out


def test_generated_pages_match_the_code():
    stale = docs.stale(DOCS)
    assert not stale, f"generated docs out of date, run `python -m tta_bench.docs`: {stale}"


def test_every_method_and_stream_has_a_page(generated):
    methods = [e.name for e in docs.methods_entries()]
    streams = [e.name for e in docs.stream_entries()]
    assert "tent" in methods and "cifar10-c" in streams and "digits-c" in streams  # partials and plain factories
    for section, names in (("methods", methods), ("streams", streams)):
        assert len(names) >= 10
        for name in names:
            page = DOCS / section / f"{name}.md"
            assert page.is_file(), f"{name} has no docs page ({page}); run `python -m tta_bench.docs`"
            assert page.read_text(encoding="utf-8").startswith(f"{docs.NOTICE}\n\n# `{name}`\n")
            assert f"[`{name}`]({name}.md)" in generated[f"{section}/README.md"]  # listed in the index


def test_no_method_option_is_undocumented(generated):
    from tta_bench.methods._doc import UNDOCUMENTED, option_docs

    entries = docs.methods_entries()
    missing = {e.name: [k for k in e.factory.defaults if not option_docs(e.factory).get(k)] for e in entries}
    missing = {name: keys for name, keys in missing.items() if keys}
    assert not missing, f"options without a meaning (declare them with opt(default, meaning, ...)): {missing}"
    pages = [p for p in generated if p.startswith("methods/")]
    assert not [p for p in pages if UNDOCUMENTED in generated[p]]


def test_method_page_shows_options_presets_and_sources(generated):
    from tta_bench.methods import Tent

    page = generated["methods/tent.md"]
    for key, default in Tent.defaults.items():
        assert f"| `{key}` | `{default!r}` |" in page
    for family, preset in Tent.presets.items():
        assert f"| `{family}` |" in page and preset["source"] in page
    # a cited file becomes a link to that file at that commit
    assert "(https://github.com/DequanWang/tent/blob/e9e926a/cfgs/tent.yaml)" in page
    assert "Wang et al., ICLR 2021" in page  # the module docstring: paper
    row = next(r for r in generated["methods/README.md"].splitlines() if r.startswith("| [`tent`](tent.md) |"))
    assert "| Fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021). |" in row


def test_stream_pages_carry_registry_facts_and_hand_notes(generated):
    from tta_bench.streams import clean_split, stream_options

    for e in docs.stream_entries():
        page = generated[f"streams/{e.name}.md"]
        assert "No hand-written text yet" not in page, (
            f"write docs/_src/streams/{docs.stream_group(e.name, e.factory)}.md"
        )
        assert f"`{docs._stream_attr(e, 'default_model')}`" in page
        assert docs._text(clean_split(e.name).describe().removeprefix("clean split: ")) in page
        for key in stream_options(e.name):
            assert f"`{key}`" in page


def test_every_common_stream_option_has_a_meaning():
    from tta_bench.streams import COMMON_OPTIONS

    assert sorted(set(COMMON_OPTIONS) - set(docs.COMMON_STREAM_OPTION_DOCS)) == []  # say what a new one means


def test_every_summary_key_has_a_meaning(generated):
    from tta_bench import rundir
    from tta_bench.rundir import schema

    keys = set(schema.Summary.__annotations__)
    metrics = {m.key for m in rundir.METRICS}
    assert sorted(keys - metrics - set(docs.SUMMARY_DOCS)) == []  # a new key: say what it means in SUMMARY_DOCS
    assert sorted(set(docs.SUMMARY_DOCS) - keys) == []  # a key gone from the schema: drop its meaning
    page = generated["run-folder-schema.md"]
    assert "| `forgetting` | `Number \\| None` | clean error after − before (pp) |" in page
    assert all(f"| `{m.key}` |" in page for m in rundir.METRICS)


def test_models_page_lists_every_model(generated):
    from tta_bench.models import MODELS

    names = [e.name for e in MODELS.items() if docs._origin(e.factory).startswith("tta_bench.")]
    assert len(names) >= 20 and "small-cnn" in names
    assert [n for n in names if f"| `{n}` |" not in generated["models.md"]] == []
    assert "## Which methods fit which model" in generated["models.md"]  # the hand-written part


def test_check_finds_changed_and_orphan_pages(tmp_path, generated):
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    docs.write(copy)
    assert docs.stale(copy) == []
    (copy / "methods" / "tent.md").write_text("edited by hand\n")
    (copy / "streams" / "gone-c.md").write_text(docs.NOTICE + "\n\n# `gone-c`\n")
    assert docs.stale(copy) == ["methods/tent.md", "streams/gone-c.md (no such stream)"]
    written = docs.write(copy)
    assert "methods/tent.md" in written and "streams/gone-c.md (removed)" in written
    assert docs.stale(copy) == [] and (copy / "methods" / "tent.md").read_text() == generated["methods/tent.md"]


def test_table_cells_and_links():
    assert docs._cell("a|b\nc") == "a\\|b c"
    assert docs._text("--set method.<hp>=") == "--set method.&lt;hp&gt;="
    assert docs.source_link("owner/repo:cfgs/a.yaml@abc123") == (
        "[owner/repo:cfgs/a.yaml@abc123](https://github.com/owner/repo/blob/abc123/cfgs/a.yaml)"
    )
    assert docs.source_link("the paper, Table 3") == "the paper, Table 3"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_relative_links_resolve():
    bad = []
    for page in hand_pages():
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # not inside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md":
                heads = re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), flags=re.M)
                if anchor not in {_slug(h) for h in heads}:
                    bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, f"broken links: {bad}"


def test_every_setting_is_documented():
    from tta_bench.config import RunConfig

    choices = {f.name: f.metadata for f in fields(RunConfig)}["setting"]["choices"]
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    assert len(choices) >= 6
    assert [s for s in choices if f"| `{s}`" not in text] == []


def test_readme_keeps_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    pins = re.search(r"pip install -q (torch==\S+ torchvision==\S+) -e", ci).group(1)
    assert f"pip install {pins} -e . && python -m tta_bench run --method ecotta --stream digits-c" in readme
    assert f'pip install {pins} -e ".[test]" && python -m pytest -q' in readme
    assert len(readme.splitlines()) < 120  # short: the rest lives in docs/


def test_every_table_row_has_its_header_cells():
    """A `|` in a cell (an option's meaning, a default) is escaped, so no row of a table gains or loses a column."""

    def cells(line: str) -> int:
        return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))

    bad, tables = [], 0
    for page in hand_pages():
        lines = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S).splitlines()
        for i in range(len(lines) - 1):
            if lines[i].startswith("|") and re.fullmatch(r"\|[-| :]+\|", lines[i + 1]):
                tables += 1
                n, j = cells(lines[i]), i + 2
                while j < len(lines) and lines[j].startswith("|"):
                    if cells(lines[j]) != n:
                        bad.append(f"{page.relative_to(ROOT)}:{j + 1}: {cells(lines[j])} cells, header {n}")
                    j += 1
    assert tables > 100 and not bad, bad
    assert cells("| `a \\| b` | c |") == 2 and cells("| a | b | c |") == 3


def test_every_python_block_compiles():
    """Unmarked blocks (fragments that need data, a GPU or a long run) are at least valid Python."""
    bad = []
    for page in hand_pages():
        for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)):
            try:
                compile(code, f"{page.name} block {i + 1}", "exec")
            except SyntaxError as e:
                bad.append(f"{page.relative_to(ROOT)} block {i + 1}: {e}")
    assert not bad, bad


def test_guides_mark_their_code():
    for guide in GUIDES:
        blocks = marked_blocks((DOCS / "guides" / f"{guide}.md").read_text(encoding="utf-8"))
        assert [k for k, _, _ in blocks].count("run") >= 1, f"{guide}: no runnable block"


def pages_with_code() -> list[Path]:
    return [p for p in hand_pages() if marked_blocks(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page", pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_marked_code_runs(page: Path, tmp_path: Path):
    blocks = marked_blocks(page.read_text(encoding="utf-8"))
    prelude = ["import importlib"]
    for kind, rel, code in blocks:
        if kind != "file":
            continue
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(code)
        package = next((pkg for prefix, pkg in PACKAGES.items() if rel.startswith(prefix)), None)
        if package:  # as if the file sat in the repository's folder of that package
            prelude.append(f"importlib.import_module({package!r}).__path__.append({str(dest.parent)!r})")
    script = "\n".join(prelude) + "\n" + "\n".join(code for kind, _, code in blocks if kind == "run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=env)  # fmt: skip
    assert r.returncode == 0, f"{page.name}'s code failed:\n{textwrap.indent(r.stderr[-4000:], '  ')}"
