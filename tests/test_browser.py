"""The leaderboard page in headless Chromium (selenium): tables render with the expected rows, sorting a
column reorders rows, every image loads. Uses the run folders made by test_leaderboard.shared_runs (digits-c), and
a page of camvid-c, pneumoniamnist-c and digits-b2n runs (test_metrics_page.three_tasks) whose tables show and
sort by each task's headline metric (mIoU; balanced error and AUC; HM, base and new accuracy) and mark the best.
Skips when chromium, chromedriver or selenium is absent (`.ci/run` installs the Debian packages). With
$TTA_BENCH_SCREENSHOTS set to a folder, full-page screenshots of both pages are saved there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
    assert column(driver, "seeds") == ["2", "2", "2"]
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
    assert len(widths) == 4 and all(done and w > 0 for done, w in widths), widths
    links = driver.execute_script("return Array.from(document.querySelectorAll('td a')).map(a => a.href);")
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
