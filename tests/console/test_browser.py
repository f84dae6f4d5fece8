"""The console in a real browser (headless Chromium, Selenium): an officer logs in through a one-time
link, filters the queue, opens a case from two alerts, closes one with a note, adds an event from
the user's timeline (which plots the copy) to the case, downloads the case's evidence package and it
verifies with `exfilguard verify`."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import admin as cli
from tests.console.browser import chromium, missing
from tests.console.running import AGENT, RunningConsole

pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "chromium is here")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    driver = chromium(tmp_path / "downloads")
    try:
        yield driver
    finally:
        driver.quit()


def _rows(driver: webdriver.Chrome) -> list[str]:
    return [
        str(r.get_attribute("data-id")) for r in driver.find_elements(By.CSS_SELECTOR, "#rows tr[data-id]")
    ]


def _download(directory: Path, name: str, timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    target = directory / name
    while time.monotonic() < deadline:  # bounded poll: Chromium writes NAME.crdownload, then renames it
        if target.exists() and not list(directory.glob("*.crdownload")):
            return target
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded within {timeout} s: {list(directory.glob('*'))}")


def test_officer_triages_builds_a_case_and_exports_verified_evidence(
    console: RunningConsole, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    # a page a form post replaces can go stale between finding an element and reading it: look again
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(console.link("carol"))
    assert browser.current_url == console.url + "/alerts"
    assert browser.find_element(By.ID, "who").text == "carol (officer)"
    assert set(_rows(browser)) == {"al-alice-copy", "al-alice-read", "al-bob-usb"}  # the open alerts

    browser.find_element(By.NAME, "user").send_keys("alice")
    browser.find_element(By.ID, "apply").click()
    wait.until(lambda d: "user=alice" in d.current_url)
    assert _rows(browser) == ["al-alice-copy", "al-alice-read"]  # newest first
    assert browser.find_element(By.ID, "total").text == "2 matching"

    for alert_id in ("al-alice-copy", "al-alice-read"):
        # Found afresh each time: the queue replaces its rows every 15 s until one is chosen.
        browser.find_element(By.CSS_SELECTOR, f"#rows input[value='{alert_id}']").click()
    browser.find_element(By.ID, "case-title").send_keys("Alice leaving with the customer database")
    browser.find_element(By.ID, "new-case").click()
    wait.until(lambda d: "/cases/C-" in d.current_url)
    case_id = browser.find_element(By.ID, "case-id").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#case-alerts tbody tr")) == 2

    browser.find_element(By.PARTIAL_LINK_TEXT, "alice copied /srv/db/customers.csv").click()
    wait.until(lambda d: d.current_url.endswith("/alerts/al-alice-copy"))
    lineage = browser.find_element(By.CLASS_NAME, "lineage").text
    assert "/srv/db/customers.csv → /media/alice/STICK/holiday.jpg" in lineage and "exact" in lineage
    assert case_id in browser.find_element(By.ID, "cases").text
    browser.find_element(By.ID, "note").send_keys("Confirmed with HR: copied on her last day")
    browser.find_element(By.ID, "close").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "resolved")
    assert "carol open → resolved: Confirmed with HR" in browser.find_element(By.ID, "history").text

    browser.get(console.url + "/alerts")
    assert set(_rows(browser)) == {"al-alice-read", "al-bob-usb"}  # no longer open

    browser.get(console.url + "/timeline/user/alice")
    assert browser.find_element(By.ID, "removable").text == "1 files, 5.0 MiB"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot rect.bytes")) == 1
    browser.find_element(By.CSS_SELECTOR, f"#events input[value='{AGENT}:1']").click()  # the stick plugged in
    browser.find_element(By.ID, "add-events-button").click()
    wait.until(lambda d: d.current_url.endswith(f"/cases/{case_id}"))
    assert "device.attach" in browser.find_element(By.ID, "case-events").text

    browser.find_element(By.ID, "package").click()
    package = _download(tmp_path / "downloads", f"{case_id}.zip")
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path / "unpacked")
    folder = tmp_path / "unpacked" / case_id
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(
            [
                "verify",
                str(folder / "events.jsonl"),
                "--public-key",
                str(folder / "collector-key.pem"),
                "--json",
            ]
        )
    assert code == 0, out.getvalue()
    assert '"rows": 4' in out.getvalue()  # the copy's write and copy, the read, the device attached
    manifest = json.loads((folder / "events.jsonl.manifest.json").read_text())
    assert manifest["filter"] == {"case": case_id, "alert": ["al-alice-copy", "al-alice-read"], "events": 4}
    report = (folder / "report.html").read_text()
    assert "Chain of custody" in report and "evidence package" in report and "holiday.jpg" in report
