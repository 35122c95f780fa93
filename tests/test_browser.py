"""The leaderboard page in headless Chromium (selenium): tables render with the expected rows, sorting a
column reorders rows, every image loads. Uses the run folders made by test_leaderboard.shared_runs.
Skips when chromium, chromedriver or selenium is absent (`.ci/run` installs the Debian packages)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_leaderboard import METHODS, shared_runs

from leaderboard.site import build

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


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    binary, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    site = build(shared_runs(tmp_path_factory), tmp_path_factory.mktemp("browser_site"))
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
    driver.get((site.out / "index.html").resolve().as_uri())
    yield driver, site
    driver.quit()


def column(driver, header: str) -> list[str]:
    """Texts of one column of the first table, top to bottom (header matched by its text)."""
    return driver.execute_script(
        """const t = document.querySelector("table.board");
        const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.trim() === arguments[0]);
        return Array.from(t.tBodies[0].rows).map(r => r.cells[i].textContent.trim());""",
        header,
    )


def click_header(driver, header: str) -> None:
    for th in driver.find_elements("css selector", "table.board th"):
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
    errors = [float(v.split()[0]) for v in column(driver, "error %")]
    assert errors == sorted(errors)  # ranked by mean error
    assert "Protocol" in driver.find_element("css selector", "details.protocol").text


def test_sorting_a_column_reorders_rows(page):
    driver, _ = page
    click_header(driver, "method")
    assert column(driver, "method") == sorted(METHODS)
    click_header(driver, "method")
    assert column(driver, "method") == sorted(METHODS, reverse=True)
    click_header(driver, "adapt MB")
    mb = [float(v) for v in column(driver, "adapt MB")]
    assert mb == sorted(mb) and column(driver, "method")[-1] == "tent"
    click_header(driver, "error %")
    click_header(driver, "error %")  # descending: the source model (no adaptation) is worst
    assert column(driver, "method")[0] == "source"
    click_header(driver, "Δ vs source")  # ascending; the source row has no value and goes last
    assert column(driver, "method")[-1] == "source"


def test_every_image_loads_and_screenshot(page, tmp_path):
    driver, site = page
    widths = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
    assert len(widths) == 4 and all(done and w > 0 for done, w in widths), widths
    links = driver.execute_script("return Array.from(document.querySelectorAll('td a')).map(a => a.href);")
    assert len(links) == 6 and all(Path(h.removeprefix("file://")).is_file() for h in links)
    shot = tmp_path / "leaderboard.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
