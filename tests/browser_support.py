"""Headless Chromium for the page tests: Debian's `chromium` + `chromium-driver`, driven by Selenium (`.ci/run`
installs them; tests marked `requires_browser` are skipped without them). The `browser` fixture (conftest) and
`benchmarks/app_latency.py` start it with `start_chromium`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

requires_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="Debian's chromium and chromium-driver are not installed"
)


def start_chromium(profile: Path):
    """A headless Chromium with its own profile folder, driven by Selenium (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def body_state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def wait_ready(driver, timeout: float = 60) -> None:
    """Until the page has loaded the model (or failed to)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: body_state(d) in ("ready", "error"))
    assert body_state(driver) == "ready", driver.find_element("id", "error").text


def classify(driver, photo: Path, timeout: float = 60) -> list[dict]:
    """Upload ``photo`` through the page's file input; its top-5 as the page shows them (``{"class_name",
    "probability"}``, the probability unrounded from the row's data attribute), or an `AssertionError` with the
    page's error."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("id", "file").send_keys(str(photo))
    WebDriverWait(driver, timeout).until(
        lambda d: (
            body_state(d) in ("done", "error") and d.execute_script("return document.body.dataset.photo") == photo.name
        )
    )
    assert body_state(driver) == "done", driver.find_element("id", "error").text
    return driver.execute_script(
        "return [...document.querySelectorAll('#predictions li')].map(li => ({class_name: "
        "li.querySelector('.name').textContent, probability: Number(li.dataset.probability)}))"
    )


def wait_offline_ready(driver, timeout: float = 60) -> None:
    """Until the page's service worker holds every file of the app (``body[data-offline=ready]``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.offline") == "ready")


def record_csp_violations(driver) -> None:
    """From the next page load on, collect the page's Content-Security-Policy violations in ``window.cspViolations``
    (the recorder is injected by DevTools, which the policy does not restrict)."""
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
            "(e) => window.cspViolations.push(`${e.effectiveDirective} ${e.blockedURI}`));"
        },
    )
