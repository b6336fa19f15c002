"""The app that runs on the phone: `carspotter app` writes a static PWA that runs the model in the browser
(onnxruntime-web). In headless Chromium, served by Python's static file server, it gives `carspotter predict`'s top-5
(probabilities within 1e-3), is installable, and still classifies after the server is gone (service worker)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from browser_support import classify, requires_browser, wait_offline_ready, wait_ready
from PIL import Image
from ranking_support import assert_ranking_matches
from serve_support import static_server

from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.formats.calibration import Calibration
from carspotter.formats.checkpoint import write_calibration
from carspotter.inference import load_classifier
from carspotter.inference.onnx_backend import OnnxClassifier
from carspotter.inference.predict import predict_images
from carspotter.preprocessing import open_photo, softmax
from carspotter.serve import web_runtime
from carspotter.serve.site import build_site
from carspotter.writable import OWNER_FILE

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def runtime() -> None:
    try:
        web_runtime.runtime_files()
    except UserError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def exported(responsive_checkpoint: Path, synthetic_prepared: Path, tmp_path_factory) -> Path:
    """`responsive_checkpoint` as a plain fp32 ONNX export (float NCHW input, no preprocessing in the graph), with a
    temperature of 2 and a "not sure" threshold of 0.3 stored: the page must apply both as `predict` does."""
    from carspotter.export.onnx import export

    folder = tmp_path_factory.mktemp("exported")
    ckpt = folder / "calibrated.ckpt"
    shutil.copyfile(responsive_checkpoint, ckpt)
    write_calibration(ckpt, Calibration(temperature=2.0, min_confidence=0.3, fitted_on="the test's choice"))
    return export(ckpt, folder / "model.onnx", data=synthetic_prepared).path


@pytest.fixture(scope="module")
def site(runtime, exported: Path, tmp_path_factory) -> Path:
    """The app of the plain export: the builder adds the preprocessing graph."""
    built = build_site(exported, tmp_path_factory.mktemp("app") / "site")
    assert built.wrapped
    return built.path


@pytest.fixture(scope="module")
def photos(synthetic_prepared: Path, tmp_path_factory) -> list[Path]:
    """Synthetic test photos as a phone would hand them over: a JPEG, a PNG, and a non-square JPEG stored sideways
    with EXIF orientation 6 (viewers rotate it 90° clockwise)."""
    out = tmp_path_factory.mktemp("photos")
    fnames = load_prepared(synthetic_prepared).test["fname"]
    first, second, third = (synthetic_prepared / fnames.iloc[i] for i in (0, 7, 14))
    png = out / "second.png"
    Image.open(second).convert("RGB").save(png)
    with Image.open(third) as img:
        stored = img.convert("RGB").crop((0, 0, img.width, img.height * 2 // 3)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    sideways = out / "sideways.jpg"
    stored.save(sideways, quality=92, exif=exif)
    return [first, png, sideways]


def predicted(model: Path, photos: list[Path]) -> list[dict[str, float]]:
    """`predict`'s probability of every class (by name), per photo."""
    return [{p["class_name"]: p["probability"] for p in r["predictions"]} for r in answers(model, photos)]


def answers(model: Path, photos: list[Path]) -> list[dict]:
    classifier = load_classifier(model)
    return predict_images(classifier, photos, top_k=len(classifier.class_names))


def assert_same_top5(page: list[dict], want: dict[str, float], photo: Path) -> float:
    """`predict`'s top-5 in its order (up to ties within the numerical difference: the page runs the pixels model
    of test_pixels, whose resize is a level away from PIL's on a few pixels; `ranking_support`), probabilities within
    1e-2; returns the largest difference."""
    assert len(page) == 5, photo.name
    return assert_ranking_matches([(p["class_name"], p["probability"]) for p in page], want, photo.name)[0]


@pytest.mark.slow
def test_site_is_a_self_contained_pwa(site: Path, exported: Path, photos: list[Path]) -> None:
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file() and p.name != OWNER_FILE}
    assert json.loads((site / OWNER_FILE).read_text()) == {"command": "app", "files": sorted(files)}
    assert {
        "index.html",
        "app.js",
        "sw.js",
        "manifest.webmanifest",
        "model.onnx",
        "model.json",
        "icons/icon-192.png",
        "icons/icon-512.png",
        *(f"ort/{f}" for f in web_runtime.FILES),
    } == files
    manifest = json.loads((site / "manifest.webmanifest").read_text())
    assert manifest["display"] == "standalone" and manifest["start_url"] == "./"
    assert {i["sizes"] for i in manifest["icons"]} == {"192x192", "512x512"}
    assert Image.open(site / "icons/icon-512.png").size == (512, 512)
    worker = (site / "sw.js").read_text()
    cached = json.loads(worker[worker.index("const FILES = ") + 14 : worker.index(";\n", worker.index("FILES = "))])
    assert set(cached) == (files - {"sw.js"}) | {"./"}  # every file of the app is stored for offline use
    for page in ("index.html", "app.js", "sw.js"):  # nothing fetched from elsewhere (no CDN)
        text = (site / page).read_text()
        assert "http://" not in text and "https://" not in text, page
    page = (site / "index.html").read_text()
    assert 'capture="environment"' in page and 'accept="image/*"' in page
    # The wrapped model takes the photo's own pixels and gives `predict`'s answer on the plain export.
    meta = json.loads((site / "model.json").read_text())
    assert meta["input_name"] == "pixels" and meta["input"]["layout"] == "NHWC"
    wrapped = OnnxClassifier(site / "model.onnx")
    assert wrapped.takes_pixels and str(site) not in onnx.load(str(site / "model.onnx")).doc_string
    assert wrapped.calibration.temperature == 2.0 and meta["calibration"]["temperature"] == 2.0  # carried along
    logits = np.concatenate([wrapped.logits(np.asarray(open_photo(p))[None]) for p in photos])
    got = softmax(logits / wrapped.calibration.temperature)
    for probs, want, photo in zip(got, predicted(exported, photos), photos, strict=True):
        top5 = [(wrapped.class_names[i], float(probs[i])) for i in np.argsort(-probs)[:5]]
        assert_ranking_matches(top5, want, photo.name)


def test_rebuild_replaces_the_sites_own_files_and_nothing_else(site: Path, exported: Path, tmp_path: Path) -> None:
    """Issue 35, item 1: a site folder often holds more than the site (a CNAME, a .git/, notes); a rebuild replaces
    the files the app wrote, removes those of them the new build no longer has, and keeps everything else."""
    old_worker = (site / "sw.js").read_text()
    site = shutil.copytree(site, tmp_path / "site")  # the shared site stays as built
    (site / "CNAME").write_text("cars.example\n")
    (site / ".git").mkdir()
    (site / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (site / "ort" / "ort-wasm-from-an-older-build.wasm").write_text("an older build's runtime")
    record = json.loads((site / OWNER_FILE).read_text())
    record["files"].append("ort/ort-wasm-from-an-older-build.wasm")  # as if an older build had written it
    (site / OWNER_FILE).write_text(json.dumps(record))
    again = build_site(exported, site, title="My cars")
    assert (site / "CNAME").read_text() == "cars.example\n" and (site / ".git" / "HEAD").is_file()
    assert not (site / "ort" / "ort-wasm-from-an-older-build.wasm").exists()
    assert json.loads((site / "manifest.webmanifest").read_text())["name"] == "My cars"
    assert "<title>My cars</title>" in (site / "index.html").read_text()
    assert (site / "sw.js").read_text() != old_worker  # a new cache version: phones pick up the new site
    assert "CNAME" not in (site / "sw.js").read_text()  # the service worker caches the site's files only
    ours = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file() and p.name != OWNER_FILE)
    assert again.files == [f for f in ours if f != "CNAME" and not f.startswith(".git/")]


def test_a_foreign_folder_is_refused_unless_overwrite_and_keeps_its_files(
    runtime, exported: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "model.json").write_text("{}")  # a file name an app site has too: still not one
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"documents: exists, holds files carspotter app did not write \(model\.json"):
        build_site(exported, foreign)
    assert (foreign / "model.json").read_text() == "{}" and len(list(foreign.iterdir())) == 2
    built = build_site(exported, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"  # written into, never emptied
    assert "model.json" in built.files and json.loads((foreign / "model.json").read_text())["class_names"]


def test_site_gets_the_users_usual_permissions(runtime, exported: Path, tmp_path: Path) -> None:
    """A web server running as another user must be able to read the site: not the 0700 of a private temp folder."""
    previous = os.umask(0o022)
    try:
        site = build_site(exported, tmp_path / "public" / "site").path
    finally:
        os.umask(previous)
    assert site.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644) for p in site.rglob("*"))


def test_cli_says_which_step_fetches_the_runtime(exported: Path, tmp_path: Path) -> None:
    """Without onnxruntime-web (a pip user who has not run the one-time step): one `error:` line naming it."""
    env = {**os.environ, "CARSPOTTER_WEB_RUNTIME": str(tmp_path / "empty")}
    cmd = [sys.executable, "-m", "carspotter.cli", "app", str(exported), "-o", str(tmp_path / "site")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "carspotter app-setup" in proc.stderr
    assert not (tmp_path / "site").exists()


def test_cli_refuses_a_file_that_is_not_an_export(runtime, tmp_path: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a model")
    cmd = [sys.executable, "-m", "carspotter.cli", "app", str(junk), "-o", str(tmp_path / "site")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not a readable ONNX model" in proc.stderr


@pytest.mark.slow
@requires_browser
def test_app_in_chromium_matches_predict_and_works_offline(
    browser, site: Path, exported: Path, photos: list[Path]
) -> None:
    expected = predicted(exported, photos)
    with Image.open(photos[2]) as sideways:  # the EXIF tag matters: ignoring it would give another answer
        unrotated = predicted(exported, [_without_exif(sideways, photos[2].parent / "unrotated.png")])[0]
    top5 = [sorted(probs, key=probs.get, reverse=True)[:5] for probs in (unrotated, expected[2])]
    assert top5[0] != top5[1] or max(abs(unrotated[c] - expected[2][c]) for c in unrotated) > 1e-3
    with static_server(site) as (url, stop_server):
        browser.get(url + "/")
        wait_ready(browser)
        assert browser.title == "carspotter"
        ms = []
        for photo, want, said in zip(photos, expected, answers(exported, photos), strict=True):
            assert_same_top5(classify(browser, photo), want, photo)  # calibrated: temperature 2 in both
            ms.append(float(browser.execute_script("return document.body.dataset.ms")))
            # the answer in words: sure or not as predict says, naming the same make
            assert browser.execute_script("return document.body.dataset.unsure") == str(said["unsure"]).lower()
            shown = browser.find_element("id", "answer").text
            assert shown.startswith("Not sure") if said["unsure"] and said["answer"].startswith("not sure") else (
                said["answer"] in shown
            ), (shown, said["answer"])
            assert f"Make: {said['make']['name']}" in browser.find_element("id", "levels").text
        print(f"\nChromium (headless), synthetic photos: {statistics.median(ms):.1f} ms per photo (median of {ms})")
        assert browser.execute_cdp_cmd("Page.getInstallabilityErrors", {})["installabilityErrors"] == []
        wait_offline_ready(browser)
        stop_server()
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/", timeout=5)
        browser.refresh()  # the network is gone: the service worker answers
        wait_ready(browser)
        assert_same_top5(classify(browser, photos[2]), expected[2], photos[2])
        junk = photos[1].parent / "notes.txt"  # the test's own folder, never the shared dataset
        junk.write_text("not a photo")
        browser.find_element("id", "file").send_keys(str(junk))
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "error")
        assert "not an image" in browser.find_element("id", "error").text


@pytest.mark.slow
@requires_browser
@pytest.mark.realdata
def test_app_in_chromium_on_real_photos(
    browser, stanford_shared: Path, responsive_checkpoint: Path, site: Path
) -> None:
    """Real JPEGs of many sizes, decoded by the browser: `predict`'s top-5 on the checkpoint (PyTorch, PIL) with the
    temperature the site's model carries."""
    photos = sorted((stanford_shared / "sample" / "images").glob("*.jpg"))[::5]
    ckpt = site.parent / "calibrated.ckpt"
    shutil.copyfile(responsive_checkpoint, ckpt)
    write_calibration(ckpt, Calibration(temperature=2.0, min_confidence=0.3, fitted_on="the test's choice"))
    expected = predicted(ckpt, photos)
    with static_server(site) as (url, _):
        browser.get(url + "/")
        wait_ready(browser)
        diffs, ms = [], []
        for photo, want in zip(photos, expected, strict=True):
            diffs.append(assert_same_top5(classify(browser, photo), want, photo))
            ms.append(float(browser.execute_script("return document.body.dataset.ms")))
    print(
        f"\nChromium (headless), {len(photos)} real photos: max |Δ probability| {max(diffs):.2e}, "
        f"{statistics.median(ms):.1f} ms per photo (median; p90 {np.percentile(ms, 90):.1f})"
    )


def _without_exif(img: Image.Image, out: Path) -> Path:
    img.convert("RGB").save(out)
    return out


def test_predict_sees_a_photo_as_it_is_displayed(photos: list[Path]) -> None:
    """EXIF orientation applied (browsers do it too); a dataset's stored pixels are left as they are."""
    from carspotter.preprocessing import open_image

    stored = open_image(photos[2])
    shown = open_photo(photos[2])
    assert shown.size == stored.size[::-1]
    assert np.array_equal(np.asarray(shown), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))
