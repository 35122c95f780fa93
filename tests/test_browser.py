"""The leaderboard page in headless Chromium (selenium): tables render with the expected rows, sorting a
column reorders rows, every image loads. Uses the run folders made by test_leaderboard.shared_runs (digits-c), and
a page of camvid-c, pneumoniamnist-c and digits-b2n runs (test_metrics_page.three_tasks) whose tables show and
sort by each task's headline metric (mIoU; balanced error and AUC; HM, base and new accuracy) and mark the best.
And a researcher's page (tests/page_runs.py: digits-c, cifar10-c, pneumoniamnist-c, a realistic and a CCC run):
the overview matrix on the first screen, no table wider than 1,400 px, no label clipped (every figure's texts
inside its saved image, every image shown whole at two window widths), every plot comparing two entries or more,
one colour per method in every plot, k and batches adapted in the realistic and CCC tables.
Skips when chromium, chromedriver or selenium is absent (`.ci/run` installs the Debian packages). With
$TTA_BENCH_SCREENSHOTS set to a folder, full-page screenshots of both pages are saved there."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_leaderboard import METHODS, shared_runs
from test_metrics_page import three_tasks

from tta_bench.leaderboard.site import build

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> tuple[str, str]:
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "headless Chromium not installed (need `chromium` and `chromedriver` on PATH: "
            "apt-get install -y chromium chromium-driver)"
        )
    pytest.importorskip("selenium", reason="selenium not installed: pip install -e '.[test]'")
    return binary, driver


def _driver(tmp_path_factory, binary: str, driver_path: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    profile = tmp_path_factory.mktemp("chromium_profile")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,2000",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))  # explicit driver: no network lookup
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    binary, driver_path = _browser()
    site = build(shared_runs(tmp_path_factory), tmp_path_factory.mktemp("browser_site"))
    driver = _driver(tmp_path_factory, binary, driver_path)
    driver.get((site.out / "index.html").resolve().as_uri())
    yield driver, site
    driver.quit()


@pytest.fixture(scope="module")
def tasks_page(tmp_path_factory):
    binary, driver_path = _browser()
    site = build(three_tasks(tmp_path_factory.mktemp("tasks_runs")), tmp_path_factory.mktemp("tasks_site"))
    driver = _driver(tmp_path_factory, binary, driver_path)
    driver.get((site.out / "index.html").resolve().as_uri())
    yield driver, site
    driver.quit()


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    """A full-page PNG (window resized to the page's height); copied to $TTA_BENCH_SCREENSHOTS when set."""
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, min(12000, max(2000, height + 100)))
    shot = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    keep = os.environ.get("TTA_BENCH_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / shot.name)
    return shot


def _table(stream: str | None) -> str:
    return f'div.stream-group[data-stream="{stream}"] table.board' if stream else "table.board"


def column(driver, header: str, stream: str | None = None) -> list[str]:
    """Texts of one column of a table (the first, or the stream's), top to bottom (header matched by its text)."""
    return driver.execute_script(
        """const t = document.querySelector(arguments[1]);
        const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.trim() === arguments[0]);
        if (i < 0) return null;
        return Array.from(t.tBodies[0].rows).map(r => r.cells[i].textContent.trim());""",
        header,
        _table(stream),
    )


def headers(driver, stream: str | None = None) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelector(arguments[0]).tHead.rows[0].cells).map(c => c.textContent.trim());",
        _table(stream),
    )


def best_in(driver, header: str, stream: str | None = None) -> list[str]:
    """Methods whose cell in column `header` is marked best."""
    return driver.execute_script(
        """const t = document.querySelector(arguments[1]);
        const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.trim() === arguments[0]);
        return Array.from(t.tBodies[0].rows).filter(r => r.cells[i].classList.contains("best"))
          .map(r => r.cells[1].textContent.trim());""",
        header,
        _table(stream),
    )


def click_header(driver, header: str, stream: str | None = None) -> None:
    for th in driver.find_elements("css selector", f"{_table(stream)} th"):
        if th.text.strip().rstrip("▲▼ ") == header:
            th.click()
            return
    raise AssertionError(f"no header {header!r}")


def test_table_renders_with_expected_rows(page):
    driver, _ = page
    assert driver.title == "tta_bench leaderboard"
    assert len(driver.find_elements("css selector", "table.board")) == 1
    assert sorted(column(driver, "method")) == sorted(METHODS)
    assert [v.split()[0] for v in column(driver, "seeds")] == ["2", "2", "2"]  # then a link per seed
    errors = [float(v.split()[0]) for v in column(driver, "error % ↓")]
    assert errors == sorted(errors)  # ranked by mean error
    assert "Protocol" in driver.find_element("css selector", "details.protocol").text


def test_sorting_a_column_reorders_rows(page):
    driver, _ = page
    click_header(driver, "method")
    assert column(driver, "method") == sorted(METHODS)
    click_header(driver, "method")
    assert column(driver, "method") == sorted(METHODS, reverse=True)
    click_header(driver, "adapt MB ↓")
    mb = [float(v) for v in column(driver, "adapt MB ↓")]
    assert mb == sorted(mb) and column(driver, "method")[-1] == "tent"
    click_header(driver, "error % ↓")
    click_header(driver, "error % ↓")  # descending: the source model (no adaptation) is worst
    assert column(driver, "method")[0] == "source"
    click_header(driver, "Δ error vs source")  # ascending; the source row has no value and goes last
    assert column(driver, "method")[-1] == "source"


def test_every_image_loads_and_screenshot(page, tmp_path):
    driver, site = page
    widths = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
    n_plots = 3 + (site.summary["forgetting_mean"].nunique() > 1)  # equal forgetting: no bars
    assert len(widths) == n_plots and all(done and w > 0 for done, w in widths), widths
    links = driver.execute_script("return Array.from(document.querySelectorAll('table.board td a')).map(a => a.href);")
    assert len(links) == 6 and all(Path(h.removeprefix("file://")).is_file() for h in links)
    screenshot(driver, "leaderboard-digits-c", tmp_path)


def test_each_task_shows_its_headline_columns_first(tasks_page):
    driver, _ = tasks_page
    streams = driver.execute_script(
        "return Array.from(document.querySelectorAll('div.stream-group')).map(g => g.dataset.stream);"
    )
    assert sorted(streams) == ["camvid-c", "digits-b2n", "pneumoniamnist-c"]
    assert headers(driver, "camvid-c")[4:7] == ["mIoU % ↑", "95 % CI", "error % ↓"]
    assert headers(driver, "pneumoniamnist-c")[4:8] == ["balanced error % ↓", "AUC % ↑", "95 % CI", "error % ↓"]
    assert headers(driver, "digits-b2n")[4:9] == ["HM % ↑", "base acc % ↑", "new acc % ↑", "95 % CI", "error % ↓"]
    # ranked by the headline metric, not by error
    assert column(driver, "method", "camvid-c") == ["tent", "norm", "source"]
    assert column(driver, "method", "pneumoniamnist-c") == ["norm", "source", "tent"]
    assert column(driver, "method", "digits-b2n") == ["ogen", "coop", "source"]
    assert "Δ mIoU vs source" in headers(driver, "camvid-c")  # paired tests on the per-domain headline metric
    # only what applies: no forgetting column where the stream has no clean split, and the page says why
    assert "forgetting pp ↓" not in headers(driver, "camvid-c") and "forgetting pp ↓" in headers(
        driver, "pneumoniamnist-c"
    )
    notes = driver.find_element("css selector", 'div.stream-group[data-stream="camvid-c"] p.note').text
    assert "no held-out clean" in notes
    assert "severity" not in driver.find_element("css selector", 'div.stream-group[data-stream="digits-b2n"] dl').text


def test_best_values_are_marked(tasks_page):
    driver, _ = tasks_page
    assert best_in(driver, "mIoU % ↑", "camvid-c") == ["tent"]
    assert best_in(driver, "error % ↓", "camvid-c") == ["norm"]
    assert best_in(driver, "balanced error % ↓", "pneumoniamnist-c") == ["norm"]
    assert best_in(driver, "AUC % ↑", "pneumoniamnist-c") == ["norm"]
    assert best_in(driver, "error % ↓", "pneumoniamnist-c") == ["tent"]  # lowest error, yet ranked last
    assert best_in(driver, "HM % ↑", "digits-b2n") == ["ogen"]
    assert best_in(driver, "base acc % ↑", "digits-b2n") == ["coop"]
    style = driver.execute_script("const c = document.querySelector('td.best'); return getComputedStyle(c).fontWeight;")
    assert int(style) >= 700


def test_sorting_by_headline_columns(tasks_page, tmp_path):
    driver, _ = tasks_page
    click_header(driver, "method", "camvid-c")
    click_header(driver, "mIoU % ↑", "camvid-c")  # first click: best first (descending for ↑)
    miou = [float(v.split()[0]) for v in column(driver, "mIoU % ↑", "camvid-c")]
    assert miou == sorted(miou, reverse=True) and column(driver, "method", "camvid-c")[0] == "tent"
    click_header(driver, "mIoU % ↑", "camvid-c")
    assert column(driver, "method", "camvid-c")[0] == "source"
    click_header(driver, "AUC % ↑", "pneumoniamnist-c")
    assert column(driver, "method", "pneumoniamnist-c")[0] == "norm"
    click_header(driver, "error % ↓", "pneumoniamnist-c")  # first click: best first (ascending for ↓)
    assert column(driver, "method", "pneumoniamnist-c")[0] == "tent"
    click_header(driver, "new acc % ↑", "digits-b2n")
    assert column(driver, "method", "digits-b2n") == ["ogen", "source", "coop"]  # new acc 65, 60, 55
    click_header(driver, "base acc % ↑", "digits-b2n")
    assert column(driver, "method", "digits-b2n")[0] == "coop"
    widths = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
    assert widths and all(done and w > 0 for done, w in widths), widths
    driver.execute_script("location.reload()")
    screenshot(driver, "leaderboard-three-tasks", tmp_path)


# --- a researcher's page: overview first, short names, plots that compare, consistent colours ---------------------


@pytest.fixture(scope="module")
def researcher_page(tmp_path_factory):
    """The page of tests/page_runs.py, opened at 1400 × 900 (a laptop's first screen); while it is built, every
    figure is checked before it is saved: its texts inside the saved image, and its legend's (name, colour) pairs."""
    from page_runs import researcher_runs

    from tta_bench.leaderboard import plots

    binary, driver_path = _browser()
    runs = researcher_runs(tmp_path_factory)
    figures: list[dict] = []
    save = plots.save

    def checked_save(fig, stem):
        legend = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
        pairs = []
        for lg in legend:
            for text, handle in zip(lg.get_texts(), lg.legend_handles):
                color = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
                pairs.append((text.get_text(), matplotlib_hex(color)))
        texts = [t.get_text() for t in fig.findobj(matplotlib_text()) if t.get_visible() and t.get_text().strip()]
        ylabels = [ax.get_ylabel() for ax in fig.axes]
        figures.append({"stem": Path(stem).name, "clipped": plots.clipped(fig), "legend": pairs, "texts": texts,
                        "ylabels": ylabels})  # fmt: skip
        return save(fig, stem)

    plots.save = checked_save
    try:
        site = build(runs, tmp_path_factory.mktemp("researcher_site"))
    finally:
        plots.save = save
    assert site.unreadable == [] and len(site.tables) == 6, site.unreadable
    driver = _driver(tmp_path_factory, binary, driver_path)
    driver.set_window_size(1400, 900)
    driver.get((site.out / "index.html").resolve().as_uri())
    yield driver, site, figures
    driver.quit()


def matplotlib_text():
    import matplotlib.text

    return matplotlib.text.Text


def matplotlib_hex(color) -> str:
    import matplotlib.colors

    if not isinstance(color, str) and len(color) and not isinstance(color[0], float):
        color = color[0]  # a collection's colours: the first
    return matplotlib.colors.to_hex(color)


def test_overview_matrix_is_on_the_first_screen(researcher_page):
    driver, _, _ = researcher_page
    first = driver.execute_script(
        """const t = document.querySelector('table.overview'), r = t.getBoundingClientRect();
        const d = document.querySelector('section.detail').getBoundingClientRect();
        return [r.top, r.bottom, window.innerHeight, d.top, t.tBodies[0].rows.length];"""
    )
    top, bottom, height, detail_top, n_rows = first
    assert top < 300 and bottom <= height, first  # the whole first matrix is visible without scrolling
    assert detail_top > bottom and n_rows == 5  # source, norm, tent, eata, eata (lr=0.01)
    titles = driver.execute_script(
        "return Array.from(document.querySelectorAll('h2.overview-title')).map(h => h.textContent.trim());"
    )
    assert titles == ["Classification: error % ↓", "Imbalanced binary classification (medical): balanced error % ↓"]
    head = driver.execute_script(
        "return Array.from(document.querySelector('table.overview').tHead.rows[0].cells).map(c => c.textContent);"
    )
    assert head == ["method", "CIFAR-10-C · ResNet-20 · continual", "CCC (CIFAR-10) · ccc-tiny-net · continual",
                    "Digits-C · small CNN · continual", "Digits-C · small CNN · realistic", "average"]  # fmt: skip
    rows = driver.execute_script(
        """return Array.from(document.querySelector('table.overview').tBodies[0].rows).map(r =>
             Array.from(r.cells).map(c => [c.textContent.trim(), c.classList.contains('best')]));"""
    )
    by = {r[0][0]: r[1:] for r in rows}
    assert list(by) == ["source", "norm", "tent", "eata", "eata (lr=0.01)"]  # baselines first, short names
    assert by["eata"][0] == ["18.15 ± 0.35", True]  # cifar10-c: best of the column, EATA's preset
    assert by["eata"][-1] == ["–", False]  # not run on every benchmark: no average
    # every number links to its detail table, whose anchor exists
    hrefs = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.overview td a')).map(a => a.getAttribute('href'));"
    )
    assert hrefs and all(driver.execute_script("return !!document.getElementById(arguments[0]);", h[1:]) for h in hrefs)


def test_detail_tables_titled_in_words_protocol_collapsed(researcher_page):
    driver, _, _ = researcher_page
    titles = driver.execute_script(
        "return Array.from(document.querySelectorAll('section.detail')).map(s => s.querySelector('h2,h3').textContent);"
    )
    assert titles[0] == "CIFAR-10-C · ResNet-20 · continual · severity 5 · 8/domain"  # family, then stream order
    assert "Digits-C · small CNN · realistic · severity 5 · 32/domain" in titles
    assert titles[-1].startswith("PneumoniaMNIST-C")  # the binary family after classification
    details = driver.execute_script(
        """return Array.from(document.querySelectorAll('details.protocol')).map(d =>
             [d.open, d.querySelector('code').textContent, d.querySelector('dl').textContent]);"""
    )
    assert len(details) == len(titles) and not any(open_ for open_, _, _ in details)
    keys = [k for _, k, _ in details]
    assert any(k.startswith("cifar10-c/continual/sev5/") for k in keys)  # the full key, inside the collapsed block
    for _, key, text in details:  # gamma (the non-iid setting's option) is never shown for these settings
        assert "gamma" not in text and ("speed_ratio=2" in text) == ("/realistic/" in key)


def test_no_table_wider_than_1400_px_at_two_widths(researcher_page):
    driver, _, _ = researcher_page
    for width in (1400, 1000):
        driver.set_window_size(width, 900)
        sizes = driver.execute_script(
            """return [Array.from(document.querySelectorAll('table')).map(t => t.getBoundingClientRect().width),
                       document.documentElement.scrollWidth, document.documentElement.clientWidth];"""
        )
        widths, page_width, view = sizes
        assert widths and max(widths) <= 1400, widths
        assert page_width <= view, sizes  # nothing sticks out of the page sideways
        if width == 1400:  # at full width no table needs its own scrollbar
            over = driver.execute_script(
                "return Array.from(document.querySelectorAll('.scroll')).filter(d => d.scrollWidth > d.clientWidth)"
                ".length;"
            )
            assert over == 0
    driver.set_window_size(1400, 900)


def test_no_label_is_clipped(researcher_page):
    driver, site, figures = researcher_page
    assert len(figures) >= 8
    assert all(f["clipped"] == [] for f in figures), [f for f in figures if f["clipped"]]
    for width in (1400, 900):  # every image shown whole (not cropped, aspect kept) and inside the window
        driver.set_window_size(width, 900)
        imgs = driver.execute_script(
            """return Array.from(document.images).map(i => { const r = i.getBoundingClientRect();
               return [i.complete, i.naturalWidth, i.naturalHeight, r.left, r.right, r.width, r.height]; });"""
        )
        assert imgs
        for done, nw, nh, left, right, w, h in imgs:
            assert done and nw > 0 and left >= 0 and right <= width
            assert abs(w / h - nw / nh) < 0.02 * nw / nh  # scaled, never cut
    driver.set_window_size(1400, 900)


def test_every_plot_compares_two_entries_or_more(researcher_page):
    driver, _, figures = researcher_page
    sections = driver.execute_script(
        """return Array.from(document.querySelectorAll('section.detail')).map(s => [s.id,
             s.querySelector('table.board').tBodies[0].rows.length, s.querySelectorAll('figure').length,
             (s.querySelector('p.no-plots') || {textContent: ''}).textContent]);"""
    )
    for sid, n_rows, n_figs, no_plots in sections:
        if n_rows < 2:
            assert n_figs == 0 and "nothing to compare" in no_plots, sid
        else:
            assert n_figs >= 2 and not no_plots, sid
    assert any(n < 2 for _, n, _, _ in sections)  # the one-entry pneumoniamnist-c table
    for f in figures:  # a legend names two entries or more
        assert not f["legend"] or len(f["legend"]) >= 2, f
    curves = [f for f in figures if f["stem"].endswith("-curve")]
    assert len(curves) == 5  # cifar10-c, ccc, digits-c, realistic: batch error; pneumoniamnist-c: balanced error
    ylabels = sorted(f["ylabels"][0] for f in curves)  # says what is plotted: the metric the table ranks by
    assert ylabels == ["balanced error % per domain", "error % per batch", "error % per batch", "error % per batch",
                       "error % per batch"], ylabels  # fmt: skip
    marks = [t for f in figures for t in f["texts"] if re.match(r"\s*round \d", t) or "running mean" in t]
    assert marks == []  # one round: no round marks


def test_one_colour_per_method_across_plots(researcher_page):
    _, _, figures = researcher_page
    colours: dict[str, set[str]] = {}
    for f in figures:
        for name, colour in f["legend"]:
            colours.setdefault(name.split(" (collapsed)")[0], set()).add(colour)
    assert {"source", "norm", "tent", "eata", "eata (lr=0.01)"} <= set(colours)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # and methods differ from each other
    assert sum(len(f["legend"]) for f in figures) > len(colours)  # the same names in several plots


def test_realistic_and_ccc_tables_show_k_and_batches_adapted(researcher_page):
    driver, site, _ = researcher_page
    real = driver.execute_script(
        """const s = Array.from(document.querySelectorAll('section.detail')).find(s => s.id.includes('realistic'));
        const t = s.querySelector('table.board'), h = Array.from(t.tHead.rows[0].cells).map(c => c.textContent);
        return [h, Array.from(t.tBodies[0].rows).map(r => [r.cells[1].textContent.trim(),
                r.cells[h.indexOf('k')].textContent.trim(), r.cells[h.indexOf('batches adapted')].textContent.trim()]),
                Array.from(s.querySelectorAll('p.note')).map(p => p.textContent)];"""
    )
    head, rows, notes = real
    # k fixed at 2: each domain's 2 batches of 16, the first adapted, the second not: 15 of 30
    assert sorted(rows) == [["source", "2.00 fixed", "15 / 30 50 %"], ["tent", "2.00 fixed", "15 / 30 50 %"]]
    assert not any("equals the continual" in n for n in notes)
    ccc = driver.execute_script(
        """const s = Array.from(document.querySelectorAll('section.detail')).find(s => s.id.startsWith('ccc'));
        const t = s.querySelector('table.board'), h = Array.from(t.tHead.rows[0].cells).map(c => c.textContent);
        return [h.includes('k'), Array.from(t.tBodies[0].rows).map(r => r.cells[h.indexOf('batches adapted')]
                .textContent.trim())];"""
    )
    assert ccc == [False, ["8 / 8 100 %", "8 / 8 100 %"]]  # continual CCC: every batch, no k


def test_one_auc_definition_stated(researcher_page, tmp_path):
    driver, site, _ = researcher_page
    text = driver.execute_script("return document.body.textContent;")
    assert text.count("AUC is the ROC AUC of the positive class pooled over all the stream's images") == 1
    s = pd.read_csv(site.out / "csv" / "summary.csv")
    med = s[s["stream"] == "pneumoniamnist-c"]
    assert med["auc_domains_mean"].notna().all() and med["auc_mean"].notna().all()
    entry_titles = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.board td.entry'))"
        ".map(c => [c.textContent.trim(), c.title]);"
    )
    full = dict(entry_titles)
    assert full["eata (lr=0.01)"].startswith("eata: ") and "lr=0.01" in full["eata (lr=0.01)"]
    assert "d_margin=0.4" in full["eata"] and "preset cifar10-c" in full["eata"]
    driver.set_window_size(1400, 900)
    screenshot_first = tmp_path / "researcher-first-screen.png"
    driver.execute_script("window.scrollTo(0, 0);")
    assert driver.save_screenshot(str(screenshot_first))
    keep = os.environ.get("TTA_BENCH_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot_first, Path(keep) / screenshot_first.name)
    screenshot(driver, "leaderboard-researcher", tmp_path)
