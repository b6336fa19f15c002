"""The page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium)
uploads a photo and the top-5 predictions appear on the page, the same as the API's; a non-image shows an error.

Skipped when Chromium, its driver or Selenium is absent (`.ci/run` installs them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from serve_support import running_server

from carspotter.data.prepared import load_prepared
from carspotter.serve.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="Debian's chromium and chromium-driver are not installed"
)


@pytest.fixture
def browser(tmp_path: Path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_recognises_an_uploaded_photo(browser, exported_onnx: Path, synthetic_prepared: Path,
                                           tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = synthetic_prepared / load_prepared(synthetic_prepared).test["fname"].iloc[0]
    junk = tmp_path / "notes.txt"
    junk.write_text("not a photo")
    with running_server(create_app(exported_onnx)) as url:
        expected = httpx.post(f"{url}/api/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                              timeout=30).json()["predictions"]
        browser.get(url + "/")
        assert browser.title == "carspotter"
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            browser.find_element(By.ID, "error").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#predictions li")
        names = [r.find_element(By.CLASS_NAME, "name").text for r in rows]
        probs = [float(r.find_element(By.CLASS_NAME, "prob").text.rstrip("%")) for r in rows]
        assert names == [p["class_name"] for p in expected] and len(names) == 5
        assert probs == pytest.approx([100 * p["probability"] for p in expected], abs=0.051)
        preview = browser.find_element(By.ID, "preview")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", preview)

        browser.find_element(By.ID, "file").send_keys(str(junk))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error")
        assert "not an image" in browser.find_element(By.ID, "error").text


def test_another_sites_page_cannot_use_the_api(browser, exported_onnx: Path, synthetic_prepared: Path,
                                               tmp_path: Path) -> None:
    """A page of another origin posts a photo the way an attacker's page would; the server refuses it unread."""
    import base64

    from starlette.datastructures import Headers
    from starlette.staticfiles import StaticFiles

    photo = synthetic_prepared / load_prepared(synthetic_prepared).test["fname"].iloc[0]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<!doctype html><title>another site</title>")
    app = create_app(exported_onnx)
    answered: list[tuple[str | None, int]] = []

    async def recording(scope, receive, send):
        async def spy(message):
            if message["type"] == "http.response.start" and scope["path"] == "/api/predict":
                answered.append((Headers(scope=scope).get("origin"), message["status"]))
            await send(message)

        await app(scope, receive, spy)

    with running_server(recording) as url, running_server(StaticFiles(directory=tmp_path / "site", html=True)) as site:
        browser.get(site + "/")
        outcome = browser.execute_async_script(
            """
            const [url, b64, done] = arguments;
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const body = new FormData();
            body.append("file", new Blob([bytes], {type: "image/jpeg"}), "car.jpg");
            fetch(url + "/api/predict", {method: "POST", body, mode: "no-cors"})
              .then((r) => done(r.type), (e) => done(String(e)));
            """,
            url, base64.b64encode(photo.read_bytes()).decode(),
        )
    assert outcome == "opaque"  # the browser sent it ...
    assert answered == [(site, 403)]  # ... with its Origin, and the server refused it before reading the photo
