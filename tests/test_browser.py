"""`carspotter serve`'s page in a real browser: it is the app's page (the model runs in the browser), and headless
Chromium shows the same top-5 as the JSON API that `serve` keeps; a non-image shows an error. Another site's page
cannot post photos to the API.

Skipped when Chromium, its driver or Selenium is absent (`.ci/run` installs them); the page test also when
onnxruntime-web has not been fetched (`carspotter app-setup`).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from browser_support import classify, record_csp_violations, requires_browser, wait_offline_ready, wait_ready
from serve_support import running_server

from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.serve import web_runtime
from carspotter.serve.app import create_app

pytestmark = pytest.mark.slow  # a real Chromium


@requires_browser
def test_serve_page_recognises_a_photo_in_the_browser(
    browser, exported_onnx: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    try:
        web_runtime.runtime_files()
    except UserError as exc:
        pytest.skip(str(exc))
    photo = synthetic_prepared / load_prepared(synthetic_prepared).test["fname"].iloc[0]
    junk = tmp_path / "notes.txt"
    junk.write_text("not a photo")
    with running_server(create_app(exported_onnx)) as url:
        expected = httpx.post(
            f"{url}/api/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}, timeout=30
        ).json()["predictions"]
        record_csp_violations(browser)
        browser.get(url + "/")
        assert browser.title == "carspotter"
        wait_ready(browser)
        shown = classify(browser, photo)
        assert [p["class_name"] for p in shown] == [p["class_name"] for p in expected] and len(shown) == 5
        assert [p["probability"] for p in shown] == pytest.approx([p["probability"] for p in expected], abs=1e-3)
        preview = browser.find_element("id", "preview")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", preview)
        # under the server's strict Content-Security-Policy: installable, offline, nothing blocked
        assert browser.execute_cdp_cmd("Page.getInstallabilityErrors", {})["installabilityErrors"] == []
        wait_offline_ready(browser)
        assert browser.execute_script("return window.cspViolations") == []

        browser.find_element("id", "file").send_keys(str(junk))
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "error")
        assert "not an image" in browser.find_element("id", "error").text


@requires_browser
def test_api_docs_render_offline_under_the_servers_policy(browser, exported_onnx: Path) -> None:
    """``/docs`` (Swagger UI, served by the server itself) shows the predict endpoint with nothing blocked."""
    from selenium.webdriver.support.ui import WebDriverWait

    with running_server(create_app(exported_onnx)) as url:
        record_csp_violations(browser)
        browser.get(url + "/docs")
        paths = ".opblock-summary-path"
        WebDriverWait(browser, 30).until(lambda d: d.find_elements("css selector", paths))
        assert "/api/predict" in [e.text for e in browser.find_elements("css selector", paths)]
        assert browser.execute_script("return window.cspViolations") == []


@requires_browser
def test_another_sites_page_cannot_use_the_api(
    browser, exported_onnx: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
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
            url,
            base64.b64encode(photo.read_bytes()).decode(),
        )
    assert outcome == "opaque"  # the browser sent it ...
    assert answered == [(site, 403)]  # ... with its Origin, and the server refused it before reading the photo
