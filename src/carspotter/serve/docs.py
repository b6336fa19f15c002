"""The API's OpenAPI documentation at ``/docs`` (Swagger UI), offline and under a strict Content-Security-Policy.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN: blank without internet, and blocked by the server's policy,
which lets nothing in from other sites. `fastapi_offline` serves Swagger UI's files from its wheel instead; the
page's one inline script is allowed by its hash.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.testclient import TestClient

from carspotter.serve.security import content_security_policy

DOCS_PATH = "/docs"


def app_with_docs(**kwargs: Any) -> tuple[FastAPI, str]:
    """A FastAPI app (``kwargs`` as FastAPI's) whose ``/docs`` needs nothing from another site, and the policy that
    page needs: its scripts and stylesheet from the server, its inline script by hash, Swagger UI's icons (``data:``
    SVGs in its stylesheet). The policy is computed from the page itself, fetched in-process from a twin app (the
    app that is returned must not have started: middleware is added to it afterwards)."""

    def create() -> FastAPI:
        return FastAPIOffline(docs_url=DOCS_PATH, redoc_url=None, **kwargs)

    page = TestClient(create()).get(DOCS_PATH).text
    return create(), content_security_policy(page, style_src=("'self'",), img_src=("'self'", "data:"))
