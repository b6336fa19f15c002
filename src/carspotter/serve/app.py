"""The web app: the app's page (the static site of `carspotter app`, running the model in the browser) and a JSON
API, over an exported ONNX model.

``create_app(model_path)`` builds a FastAPI app; `carspotter serve` runs it with uvicorn on the loopback interface.
Without the page's in-browser runtime (`carspotter app-setup` not run) the API still serves and ``/`` says what to do.
Hostile uploads get a 4xx JSON ``{"error": ...}`` and the server keeps serving: a body over ``max_bytes`` is cut off
while it streams in (413), an image over ``max_pixels`` is refused from its header before any pixel is decoded (413),
non-multipart requests and non-image parts are 415, undecodable or truncated images 400. A part sent without a
content type or with a generic one (``requests`` sends none) is accepted when its bytes are an image (sniffed by
PIL from the header). ``GET /docs``: the OpenAPI documentation (`carspotter.serve.docs`, offline). Other web
sites' pages are kept out by `carspotter.serve.security` (security headers, Origin check; ``cors_origins`` lets
chosen sites in) and by the Host check (`carspotter.serve.server`: DNS rebinding).
"""

from __future__ import annotations

import html
import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from carspotter.errors import UserError
from carspotter.inference.answers import answer
from carspotter.inference.onnx_backend import OnnxClassifier
from carspotter.preprocessing import check_pixels, open_photo
from carspotter.preprocessing import max_pixels as configured_max_pixels
from carspotter.serve.docs import DOCS_PATH, app_with_docs
from carspotter.serve.security import BrowserGuard, content_security_policy, normalise_origin
from carspotter.serve.server import LOOPBACK_NAMES
from carspotter.serve.site import build_site

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024  # an upload larger than this is refused (413)
MULTIPART_SLACK = 16 * 1024  # boundaries and part headers around the file itself
TOP_K = 5
GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")  # "unknown": the bytes decide
PREDICT_DOC = {  # the multipart body, for /docs (the route reads the raw stream to refuse oversize bodies early)
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary", "description": "a JPEG, PNG or WebP photo"}},
    }}}},
}


class UploadRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(
    model_path: str | Path,
    max_bytes: int = MAX_BYTES,
    max_pixels: int | None = None,
    cors_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] = LOOPBACK_NAMES,
) -> FastAPI:
    """The app serving ``model_path`` (an exported carspotter `.onnx`); the model is loaded once, here.

    ``max_pixels``: the largest image accepted (default: `carspotter.preprocessing.max_pixels`, as every command);
    ``cors_origins``: other sites (``https://host[:port]``) whose pages may call the API; ``allowed_hosts``: the Host
    names answered (`carspotter.serve.server.allowed_hosts`; others get 400, which stops DNS rebinding).
    """
    if max_bytes < 1:
        raise UserError(f"--max-bytes {max_bytes}: the largest upload must be at least 1 byte")
    model_path = Path(model_path)
    pixel_limit = configured_max_pixels() if max_pixels is None else max_pixels
    allowed = [normalise_origin(o) for o in cors_origins]
    if model_path.suffix.lower() != ".onnx":
        raise UserError(f"{model_path}: serve runs an exported .onnx model; create one with `carspotter export`")
    classifier = OnnxClassifier(model_path)
    app, docs_csp = app_with_docs(title="carspotter", description="Car make/model/year from a photo.")
    app.state.site_dir = tempfile.TemporaryDirectory(prefix="carspotter-site-")  # removed with the app
    site = Path(app.state.site_dir.name) / "site"
    try:
        build_site(model_path, site)
        page = (site / "index.html").read_text(encoding="utf-8")
    except UserError as exc:
        log.warning("no app page (the JSON API still serves): %s", exc)
        site = None
        page = f"<!doctype html><title>carspotter</title><p>The app page is not available: {html.escape(str(exc))}"
    if allowed:  # answers their preflights and lets their pages read the answers
        app.add_middleware(CORSMiddleware, allow_origins=allowed, allow_methods=["GET", "POST"])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.add_middleware(  # outermost
        BrowserGuard, csp=content_security_policy(page), csp_by_path={DOCS_PATH: docs_csp}, allowed_origins=allowed
    )

    @app.exception_handler(UploadRefused)
    async def _refused(_: Request, exc: UploadRefused) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": model_path.name, "classes": len(classifier.class_names)}

    @app.post("/api/predict", openapi_extra=PREDICT_DOC)
    async def predict(
        request: Request,
        top_k: int = Query(TOP_K, ge=1, description="how many classes, most likely first"),
        min_confidence: float | None = Query(
            None, ge=0.0, le=1.0, description="below this top probability the answer is unsure (default: the "
            "model's fitted threshold)"
        ),
    ) -> dict[str, Any]:
        """The ``top_k`` most likely classes of the photo in multipart field ``file`` with calibrated probabilities,
        the most likely make and model (probabilities summed over their classes), ``unsure`` and the ``answer`` in
        words."""
        data = await read_upload(request, max_bytes)
        probs = await run_in_threadpool(_probabilities, classifier, data, pixel_limit)
        threshold = classifier.calibration.answer_threshold if min_confidence is None else min_confidence
        return answer(probs, classifier.class_names, classifier.classes, top_k, threshold)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": where}, status_code=422)

    if site is None:

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def no_page() -> HTMLResponse:
            return HTMLResponse(page, status_code=503)

    else:
        app.mount("/", StaticFiles(directory=site, html=True), name="app")  # last: the API routes come first
    return app


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The bytes of the multipart field ``file``, refusing oversize bodies while they stream in."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadRefused(415, f"expected multipart/form-data with an image in field 'file', got {content_type!r}")
    limit = max_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadRefused(413, f"upload too large ({int(declared)} bytes; limit {max_bytes})")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise UploadRefused(413, f"upload too large (over {max_bytes} bytes)")

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=4)
    except Exception as exc:  # noqa: BLE001 - Starlette raises several types for malformed multipart bodies
        raise UploadRefused(400, f"malformed multipart body ({exc})") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise UploadRefused(422, "no file in multipart field 'file'")
    part_type = (upload.content_type or "").split(";")[0].strip().lower()
    data = await upload.read()
    if not (part_type.startswith("image/") or (part_type in GENERIC_TYPES and _looks_like_image(data))):
        raise UploadRefused(415, f"{upload.filename or 'upload'}: content type {part_type or 'missing'!r} is not "
                                 "an image (send a JPEG, PNG or WebP photo)")
    if len(data) > max_bytes:
        raise UploadRefused(413, f"upload too large ({len(data)} bytes; limit {max_bytes})")
    if not data:
        raise UploadRefused(400, "empty file")
    return data


def _looks_like_image(data: bytes) -> bool:
    """Whether PIL recognises an image format from the header (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Image.DecompressionBombError:
        return True  # an image all the same; refused as too large further on
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def _probabilities(classifier: OnnxClassifier, data: bytes, max_pixels: int) -> np.ndarray:
    """Probe the header, decode, preprocess and classify one upload; hostile images raise `UploadRefused`."""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except Image.DecompressionBombError:
        raise UploadRefused(413, f"image has too many pixels (limit {max_pixels})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UploadRefused(400, "not a readable image (send a JPEG, PNG or WebP photo)") from None
    try:
        check_pixels((width, height), "upload", max_pixels)
    except UserError as exc:
        raise UploadRefused(413, str(exc)) from None
    try:
        photo = open_photo(data, max_pixels)
    except UserError as exc:
        raise UploadRefused(400, str(exc)) from None
    return classifier.predict([photo])[0]
