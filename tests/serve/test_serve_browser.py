"""A real browser on `study serve` while a real tiny study runs: the index and the study page see
the trial count rise without a reload, every figure is drawn, and nothing is logged to the console
as an error (a blocked script, a refused style, a failed request). Waits are on markers the pages
set (``data-ready``, ``data-refreshes``, the counts shown), never fixed sleeps.

Needs Debian's ``chromium`` and ``chromium-driver``; skipped only when Chromium is absent and the
``CI`` environment variable is not set (in CI it must run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1000", "--enable-unsafe-swiftshader")  # fmt: skip
NAME = "serve-live"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"),
        reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`study serve` on an empty storage, then `study run` of a small variant of the quickstart in it."""
    storage = tmp_path_factory.mktemp("serve") / "studies"
    storage.mkdir()
    port = free_port()
    env = {**os.environ, "RAY_AIR_NEW_OUTPUT": "0"}
    log = open(storage.parent / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "study.cli", "serve", "--storage", str(storage), "--port",
                               str(port)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            assert server.poll() is None, (storage.parent / "serve.log").read_text()
            return False

    wait_until(up, 120, "study serve to listen")
    run_log = open(storage.parent / "run.log", "w")
    run = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", "search_spaces/quickstart.yaml", "--name", NAME, "--storage",
         str(storage), "--no-report", "--set", "repeats=2", "--set", "fixed.epochs=3", "--set", "data.n_train=300",
         "--set", "data.n_test=300"],
        cwd=REPO, stdout=run_log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", storage, run
    finally:
        for p in (run, server):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        log.close()
        run_log.close()


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
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def js(driver, script: str):
    return driver.execute_script(script)


@pytest.mark.timeout(1800)  # a real study on a shared machine: minutes
def test_index_and_study_page_follow_a_running_study(served, browser) -> None:
    base, storage, run = served
    # the index: the study appears, then its finished trials rise, without a reload
    browser.get(base + "/")
    wait_until(lambda: js(browser, "return document.body.dataset.ready") == "1", 120, "the index to draw")
    js(browser, "window.__same_page = 1")
    row = f"document.querySelector('tr[data-name=\"{NAME}\"] .trials-done')"
    wait_until(lambda: js(browser, f"return {row} !== null"), 600, "the study on the index")
    first = int(js(browser, f"return {row}.textContent"))
    total = 8
    wait_until(lambda: int(js(browser, f"return {row}.textContent")) > first or first == total, 900,
               "the index's count of finished trials to rise")  # fmt: skip
    assert js(browser, "return window.__same_page") == 1  # no reload happened
    assert console_errors(browser) == []

    # the study page: drawn, then refreshed in place while trials finish
    browser.get(f"{base}/study/{NAME}")
    wait_until(lambda: js(browser, "return document.body.dataset.ready") == "1", 300, "the study page to draw")
    js(browser, "window.__same_page = 2")
    done = int(js(browser, "return document.getElementById('trials-done').textContent"))
    if run.poll() is None and done < total:
        wait_until(lambda: int(js(browser, "return document.getElementById('trials-done').textContent")) > done,
                   900, "the study page's count of finished trials to rise")  # fmt: skip
    assert js(browser, "return window.__same_page") == 2
    assert run.wait(900) == 0, (storage.parent / "run.log").read_text()[-3000:]
    wait_until(lambda: js(browser, "return document.getElementById('trials-done').textContent") == str(total), 120,
               "every trial shown finished")  # fmt: skip
    wait_until(lambda: js(browser, "return document.querySelectorAll('#sections .js-plotly-plot').length") >= 3, 300,
               "the report's figures")  # fmt: skip
    drawn = js(browser, "return Array.from(document.querySelectorAll('#sections .js-plotly-plot'))"
                        ".map(d => !!d._fullLayout && d.querySelectorAll('svg.main-svg').length > 0)")  # fmt: skip
    assert drawn and all(drawn)
    rows = js(browser, "return document.querySelectorAll('#trials tbody tr').length")
    assert rows == total
    assert console_errors(browser) == []
