"""What keeps other web sites away from the local server: security headers and the Origin check.

A page on any site the user visits could otherwise post photos to ``http://127.0.0.1:8000/api/predict`` (a
multipart POST is a "simple" request, sent without a CORS preflight) or frame the page. So every response says
``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and a Content-Security-Policy that allows only what
the app's page needs from the server itself (its scripts, onnxruntime-web's WASM, the service worker, the manifest,
model and icons), its inline style (by hash) and photo previews (``blob:``): nothing inline unhashed, no other site,
no ``eval`` (WebAssembly compilation only, ``'wasm-unsafe-eval'``); and a
request whose ``Origin`` is neither the server's own nor one given with ``--cors-origin`` is refused (403) before
it is read. Requests without an ``Origin`` (curl, scripts) are not from a browser page and pass.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carspotter.errors import UserError

_INLINE = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL) for tag in ("script", "style")}


def content_security_policy(
    page: str, *, style_src: Iterable[str] = (), img_src: Iterable[str] = ("'self'", "blob:")
) -> str:
    """The strictest policy under which ``page`` (by default the app's, `carspotter.serve.site`) still works: scripts,
    WASM, service worker, manifest, fetches and icons from the server itself; its inline blocks by their SHA-256.
    ``style_src`` / ``img_src``: the sources a page's stylesheets and images need beyond that."""

    def hashes(tag: str) -> list[str]:
        blocks = _INLINE[tag].findall(page)
        return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks]

    return "; ".join(
        (
            "default-src 'none'",
            " ".join(["script-src 'self' 'wasm-unsafe-eval'", *hashes("script")]),
            " ".join(["style-src", *((*style_src, *hashes("style")) or ["'none'"])]),
            " ".join(["img-src", *img_src]),
            "connect-src 'self'",
            "worker-src 'self'",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def normalise_origin(origin: str) -> str:
    """``https://Cars.example/`` → ``https://cars.example``; anything but scheme://host[:port] is a `UserError`."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise UserError(f"--cors-origin {origin!r}: expected a site's origin such as https://cars.example:8443")
    return f"{parts.scheme}://{parts.netloc.lower()}"


class BrowserGuard:
    """ASGI middleware: security headers on every response, foreign origins refused."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        csp: str,
        csp_by_path: Mapping[str, str] | None = None,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        """``csp``: every response's policy, except the paths of ``csp_by_path`` (another page's own policy)."""
        self.app = app
        self.allowed = frozenset(allowed_origins)
        self.csp = csp
        self.csp_by_path = dict(csp_by_path or {})
        self.headers = {
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
                headers["Content-Security-Policy"] = self.csp_by_path.get(scope["path"], self.csp)
            await send(message)

        request_headers = Headers(scope=scope)
        origin = request_headers.get("origin")
        if origin is not None and not self._is_allowed(origin, scope, request_headers):
            refusal = JSONResponse(
                {
                    "error": f"cross-origin request from {origin} refused: only this server's own page may call it; "
                    f"start serve with --cors-origin {origin} to allow that site"
                },
                status_code=403,
            )
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _is_allowed(self, origin: str, scope: Scope, headers: Headers) -> bool:
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '').lower()}"
        return origin.lower() == own or origin.lower() in self.allowed
