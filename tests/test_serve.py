"""The web app over a real HTTP connection: predictions, the page, and every hostile upload refused with a clear
4xx JSON error while the server keeps serving."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from importlib import resources
from pathlib import Path

import httpx
import onnx
import pytest
from PIL import Image
from serve_support import running_server

from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.serve import web_runtime
from carspotter.serve.app import create_app
from carspotter.serve.server import allowed_hosts

MAX_BYTES = 300_000
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def server(exported_onnx: Path):
    with running_server(create_app(exported_onnx, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def car_jpeg(synthetic_prepared: Path) -> bytes:
    return (synthetic_prepared / load_prepared(synthetic_prepared).test["fname"].iloc[0]).read_bytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` pixels in a few dozen bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def sha256_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    for word in words:
        assert word in message.lower()


def assert_still_serving(client: httpx.Client, car_jpeg: bytes) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.post("/api/predict", files={"file": ("car.jpg", car_jpeg, "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5


def test_predict_returns_top5_of_the_models_classes(client, car_jpeg: bytes, exported_onnx: Path) -> None:
    from carspotter.inference.onnx_backend import OnnxClassifier

    names = OnnxClassifier(exported_onnx).class_names
    r = client.post("/api/predict", files={"file": ("car.jpg", car_jpeg, "image/jpeg")})
    assert r.status_code == 200
    predictions = r.json()["predictions"]
    assert len(predictions) == 5 and set(predictions[0]) == {"class_id", "class_name", "probability"}
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert all(names[p["class_id"]] == p["class_name"] for p in predictions)


def test_healthz_and_page(client) -> None:
    """The page is the app's (`carspotter app`): the model, the in-browser runtime and the service worker beside it."""
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    try:
        web_runtime.runtime_files()
    except UserError as exc:
        pytest.skip(str(exc))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == resources.files("carspotter.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    assert 'id="file"' in page.text and 'src="app.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: the page works offline
    for name in ("app.js", "sw.js", "manifest.webmanifest", "model.json", *(f"ort/{f}" for f in web_runtime.FILES)):
        assert client.get(f"/{name}").status_code == 200, name
    model = client.get("/model.onnx")
    assert model.status_code == 200 and onnx.load_from_string(model.content).graph.input[0].name == "pixels"


def test_without_the_browser_runtime_the_api_still_serves(exported_onnx: Path, car_jpeg: bytes, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARSPOTTER_WEB_RUNTIME", str(tmp_path / "not-fetched"))
    with running_server(create_app(exported_onnx)) as url, httpx.Client(base_url=url, timeout=30) as c:
        page = c.get("/")
        assert page.status_code == 503 and "carspotter app-setup" in page.text
        assert c.post("/api/predict", files={"file": ("car.jpg", car_jpeg, "image/jpeg")}).status_code == 200


def test_non_image_is_refused(client, car_jpeg) -> None:
    r = client.post("/api/predict", files={"file": ("notes.jpg", b"this is not a picture at all", "image/jpeg")})
    assert_refused(r, 400, "not a readable image")
    assert_still_serving(client, car_jpeg)


def test_truncated_jpeg_is_refused(client, car_jpeg: bytes) -> None:
    r = client.post("/api/predict", files={"file": ("cut.jpg", car_jpeg[: len(car_jpeg) // 2], "image/jpeg")})
    assert_refused(r, 400, "truncated")
    assert_still_serving(client, car_jpeg)


@pytest.mark.parametrize("size", [(2500, 2500), (100_000, 100_000)], ids=["over-limit", "over-pillow-bomb-limit"])
def test_decompression_bomb_is_refused_before_decoding(client, car_jpeg, size) -> None:
    r = client.post("/api/predict", files={"file": ("bomb.png", png_header_only(*size), "image/png")})
    assert_refused(r, 413, "too many pixels")
    assert_still_serving(client, car_jpeg)


def test_oversize_upload_is_refused(client, car_jpeg: bytes) -> None:
    big = io.BytesIO()
    Image.effect_noise((700, 700), 80).convert("RGB").save(big, "PNG")  # noise does not compress: > MAX_BYTES
    assert big.tell() > MAX_BYTES
    r = client.post("/api/predict", files={"file": ("big.png", big.getvalue(), "image/png")})
    assert_refused(r, 413, "too large")
    assert_still_serving(client, car_jpeg)


def test_oversize_streamed_upload_without_length_is_cut_off(client, car_jpeg: bytes) -> None:
    boundary = "carspotterboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(40):  # 40 × 64 kB, sent chunked: no Content-Length to refuse up front
            yield b"\xff" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    try:
        r = client.post("/api/predict", content=body(), headers=headers)
        assert_refused(r, 413, "too large")
    except (httpx.WriteError, httpx.RemoteProtocolError):
        pass  # the server answered 413 and closed while the client was still sending: refused all the same
    assert_still_serving(client, car_jpeg)


def test_wrong_content_types_are_refused(client, car_jpeg: bytes) -> None:
    assert_refused(client.post("/api/predict", json={"file": "car.jpg"}), 415, "multipart/form-data")
    assert_refused(client.post("/api/predict", content=car_jpeg, headers={"content-type": "image/jpeg"}), 415)
    r = client.post("/api/predict", files={"file": ("car.txt", car_jpeg, "text/plain")})
    assert_refused(r, 415, "not an image")
    r = client.post("/api/predict", files={"photo": ("car.jpg", car_jpeg, "image/jpeg")})
    assert_refused(r, 422, "field 'file'")
    assert_still_serving(client, car_jpeg)


def test_serve_refuses_a_checkpoint(trained_checkpoint: Path) -> None:
    with pytest.raises(UserError, match="export"):
        create_app(trained_checkpoint)


def test_part_without_content_type_is_sniffed(server: str, car_jpeg: bytes) -> None:
    """What `requests.post(url, files={"file": open("car.jpg", "rb")})` sends: a part with no content type."""
    requests = pytest.importorskip("requests")
    with open_bytes(car_jpeg) as photo:
        r = requests.post(f"{server}/api/predict", files={"file": photo}, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 5
    generic = requests.post(f"{server}/api/predict", files={"file": ("car", car_jpeg, "application/octet-stream")},
                            timeout=30)
    assert generic.status_code == 200, generic.text
    with open_bytes(b"%PDF-1.4 not a photo at all") as junk:
        refused = requests.post(f"{server}/api/predict", files={"file": junk}, timeout=30)
    assert refused.status_code == 415 and "not an image" in refused.json()["error"]


def test_top_k_query_parameter_and_docs(client, car_jpeg: bytes) -> None:
    r = client.post("/api/predict?top_k=2", files={"file": ("car.jpg", car_jpeg, "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    assert_refused(client.post("/api/predict?top_k=0", files={"file": ("car.jpg", car_jpeg, "image/jpeg")}), 422,
                   "top_k")
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert any(p["name"] == "top_k" for p in spec["paths"]["/api/predict"]["post"]["parameters"])
    docs = client.get("/docs")  # Swagger UI from the server itself: nothing from a CDN (the browser test renders it)
    assert docs.status_code == 200 and "cdn" not in docs.text and "https://" not in docs.text
    assert "style-src 'self'" in docs.headers["content-security-policy"]  # its own policy: its stylesheet...
    assert "style-src 'self'" not in client.get("/").headers["content-security-policy"]  # ...not the app page's
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', docs.text):
        assert client.get(asset).status_code == 200, asset


def open_bytes(data: bytes):
    """A named file object, as a user's `open("car.jpg", "rb")` (requests sends its name but no content type)."""
    f = io.BytesIO(data)
    f.name = "upload"
    return contextlib.closing(f)


# ------------------------------------------------------------------------------- other sites' pages (issue 11)


def test_every_response_carries_the_security_headers(client, car_jpeg: bytes) -> None:
    responses = [
        client.get("/"),
        client.get("/healthz"),
        client.post("/api/predict", files={"file": ("car.jpg", car_jpeg, "image/jpeg")}),
        client.post("/api/predict", files={"file": ("notes.jpg", b"not a picture", "image/jpeg")}),
        client.get("/no-such-page"),
    ]
    page_styles = re.findall(r"<style>(.*?)</style>", responses[0].text, re.DOTALL)
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        policy = r.headers["content-security-policy"]
        csp = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
        # the app's page: its scripts, WASM, service worker, manifest, model and icons from this server only
        assert csp["script-src"] == "'self' 'wasm-unsafe-eval'"
        assert csp["connect-src"] == csp["worker-src"] == csp["manifest-src"] == "'self'"
        assert csp["img-src"] == "'self' blob:"
        assert csp["style-src"].split() == ([f"'sha256-{sha256_b64(s)}'" for s in page_styles] or ["'none'"])
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
        assert not re.search(r"https?:|\*", policy)  # no other site


def test_a_foreign_origin_is_refused_and_the_own_origin_served(server: str, client, car_jpeg: bytes) -> None:
    photo = {"file": ("car.jpg", car_jpeg, "image/jpeg")}
    r = client.post("/api/predict", files=photo, headers={"origin": "https://evil.example"})
    assert_refused(r, 403, "cross-origin", "https://evil.example", "--cors-origin")
    assert "access-control-allow-origin" not in r.headers
    assert client.post("/api/predict", files=photo, headers={"origin": server}).status_code == 200  # its own page
    assert client.post("/api/predict", files=photo, headers={"origin": "null"}).status_code == 403  # sandboxed
    assert_still_serving(client, car_jpeg)  # no Origin at all (curl, scripts): served


def test_cors_origin_lets_one_chosen_site_in(exported_onnx: Path, car_jpeg: bytes) -> None:
    chosen = "https://cars.example:8443"
    with running_server(create_app(exported_onnx, cors_origins=[chosen + "/"])) as url:
        photo = {"file": ("car.jpg", car_jpeg, "image/jpeg")}
        ok = httpx.post(f"{url}/api/predict", files=photo, headers={"origin": chosen}, timeout=30)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == chosen
        preflight = httpx.options(
            f"{url}/api/predict", headers={"origin": chosen, "access-control-request-method": "POST"}, timeout=30
        )
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == chosen
        other = httpx.post(f"{url}/api/predict", files=photo, headers={"origin": "https://cars.example"}, timeout=30)
        assert other.status_code == 403  # another port is another origin
    with pytest.raises(UserError, match="expected a site's origin"):
        create_app(exported_onnx, cors_origins=["cars.example"])


def test_dns_rebinding_is_refused_by_the_host_check(server: str, client, car_jpeg: bytes) -> None:
    """Issue 35, item 8: a page on evil.example whose name was rebound to 127.0.0.1 sends Host and Origin both
    evil.example, which the Origin check alone took for the server's own page."""
    photo = {"file": ("car.jpg", car_jpeg, "image/jpeg")}
    rebound = {"host": "evil.example", "origin": "http://evil.example"}
    r = client.post("/api/predict", files=photo, headers=rebound)
    assert r.status_code == 400 and "predictions" not in r.text
    assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
    port = server.rsplit(":", 1)[1]
    for name in ("127.0.0.1", "localhost"):  # the loopback names a user types
        assert client.get("/healthz", headers={"host": f"{name}:{port}"}).status_code == 200
    assert_still_serving(client, car_jpeg)


def test_allowed_host_lets_a_chosen_name_in(exported_onnx: Path) -> None:
    hosts = allowed_hosts("127.0.0.1", ["cars.example", "*.garage.example"])
    assert hosts == ["127.0.0.1", "localhost", "[::1]", "cars.example", "*.garage.example"]
    with running_server(create_app(exported_onnx, allowed_hosts=hosts)) as url:
        for name, status in (("cars.example", 200), ("pi.garage.example", 200), ("evil.example", 400)):
            assert httpx.get(f"{url}/healthz", headers={"host": name}, timeout=30).status_code == status, name
    everywhere = allowed_hosts("0.0.0.0")
    assert "localhost" in everywhere and socket.gethostname().lower() in everywhere


def test_a_port_in_use_is_one_error_line_before_serving(
    exported_onnx: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from carspotter.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        monkeypatch.setattr(sys, "argv", ["carspotter", "serve", str(exported_onnx), "--port", str(port)])
        with pytest.raises(SystemExit) as done:
            main()
    out = capsys.readouterr()
    assert done.value.code == 2 and "serving" not in out.out
    assert re.fullmatch(rf"error: cannot listen on 127\.0\.0\.1:{port}: Address already in use; .*--port.*\n", out.err)


def test_sigterm_cleans_up_like_ctrl_c(exported_onnx: Path, tmp_path: Path) -> None:
    """Issue 35, item 7: systemd and `docker stop` send SIGTERM; the site's temporary folder and the compiler cache
    folder go with the server, as after Ctrl-C."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "carspotter.cli", "serve", str(exported_onnx), "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the socket is bound and the site built
        assert line.startswith("serving"), proc.stderr.read() if proc.poll() is not None else line
        url = re.search(r"http://\S+/", line).group(0)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "healthz", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.2)
        made = sorted(p.name.rsplit("-", 1)[0] for p in temp.iterdir())
        assert made == ["carspotter-site", "carspotter-torchinductor"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(temp.iterdir()) == []
