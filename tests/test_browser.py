"""`carspotter serve`'s page in a real browser: it is the app's page (the model runs in the browser), and headless
Chromium shows the same top-5 as the JSON API that `serve` keeps; a non-image shows an error.

Skipped when Chromium, its driver or Selenium is absent (`.ci/run` installs them), or when onnxruntime-web has not
been fetched (`carspotter app-setup`).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from browser_support import classify, requires_browser, wait_ready
from serve_support import running_server

from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.serve import web_runtime
from carspotter.serve.app import create_app


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
        browser.get(url + "/")
        assert browser.title == "carspotter"
        wait_ready(browser)
        shown = classify(browser, photo)
        assert [p["class_name"] for p in shown] == [p["class_name"] for p in expected] and len(shown) == 5
        assert [p["probability"] for p in shown] == pytest.approx([p["probability"] for p in expected], abs=1e-3)
        preview = browser.find_element("id", "preview")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", preview)

        browser.find_element("id", "file").send_keys(str(junk))
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "error")
        assert "not an image" in browser.find_element("id", "error").text
