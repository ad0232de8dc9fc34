"""A real browser opens the reports from disk: no JavaScript error, every plot drawn, nothing fetched.

Needs Debian's ``chromium`` and ``chromium-driver``; skipped only when Chromium is absent and the
``CI`` environment variable is not set (in CI it must run).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from analysis import report as R
from analysis.synthetic import digit_pairs_study

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    # parcoords draws with WebGL; newer Chromium only falls back to software WebGL when asked
    "--enable-unsafe-swiftshader",
)
EVIL_NAME = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"),
        reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
    ),
]

# Graph divs that Plotly has laid out and drawn: a figure with its SVG layers filled in.
DRAWN = """
return Array.from(document.querySelectorAll('div.plotly-graph-div')).map(d => ({
  id: d.id,
  laidOut: !!d._fullLayout,
  svgs: d.querySelectorAll('svg.main-svg').length,
  shapes: d.querySelectorAll('svg.main-svg path, svg.main-svg rect, svg.main-svg text').length,
}));
"""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_and_wait(driver, path: Path) -> list[dict]:
    """Load a file:// page, wait until every graph div is drawn, return their state."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())

    def drawn(d):
        state = d.execute_script(DRAWN)
        return state if state and all(s["laidOut"] and s["svgs"] and s["shapes"] > 10 for s in state) else False

    try:
        return WebDriverWait(driver, 30, poll_frequency=0.25).until(drawn)
    except TimeoutException:
        pytest.fail(f"plots not drawn: {driver.execute_script(DRAWN)}")


def assert_clean(driver) -> None:
    """No JavaScript error was logged, no injected code ran, nothing was fetched from a network."""
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    assert driver.execute_script("return window.__pwned === undefined")
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in urls if not u.startswith(("file:", "data:", "blob:"))] == []


def test_study_report_renders_offline(browser, tmp_path, write_study):
    study = digit_pairs_study(repeats=3, epochs=6, n_running=4)
    study = dataclasses.replace(
        study, spec=study.spec | {"name": EVIL_NAME}, metadata=study.metadata | {"name": EVIL_NAME}
    )
    report = R.write_study_outputs(write_study(tmp_path / "study", study))
    state = open_and_wait(browser, report)
    assert len(state) == 7  # 3 effects, 1 heat map, curves, parallel coordinates, importance
    assert_clean(browser)
    assert browser.title.startswith(EVIL_NAME)  # shown as text, not run
    heading = browser.find_element("css selector", "h1").text
    assert heading == f"Study report: {EVIL_NAME}"
    banner = browser.find_element("css selector", ".banner.warn").text
    assert banner.startswith("Study still running")
    # figures laid out in the two-column grid are resized to their cell
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('#effects .plotly-graph-div'))"
        ".map(d => [d._fullLayout.width, d.getBoundingClientRect().width])"
    )
    assert all(abs(a - b) <= 2 for a, b in widths)


def test_comparison_report_renders_offline(browser, tmp_path, write_study, digit_study, size_study):
    a = write_study(tmp_path / "a", digit_study)
    b = write_study(tmp_path / "b", size_study)
    out = R.write_comparison([a, b], tmp_path / "compare.html")
    state = open_and_wait(browser, out)
    assert len(state) == 1
    assert_clean(browser)
