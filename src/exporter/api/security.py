"""Response hardening: security headers on every response, a CSP that lets Swagger UI run, and
CORS only for origins the configuration names (none by default)."""

from __future__ import annotations

import base64
import hashlib
import re

from aiohttp import web

from exporter.api.openapi import Handler
from exporter.keys import SETTINGS

# API responses are JSON: nothing in them may load, run or be framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The Swagger UI page: its own scripts and styles, its inline bootstrap script and style by
# hash (no 'unsafe-inline' for scripts), the spec fetched from us, icons as data: URIs.
# Swagger UI sets inline style attributes, hence 'unsafe-inline' for styles only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DOCS_ROUTE = "swagger.docs"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

CORS_METHODS = "GET, POST, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
CORS_EXPOSE = "Idempotent-Replayed, Location, Retry-After, X-Request-ID"
CORS_MAX_AGE_S = "600"


def docs_csp(html: str) -> str:
    """The Swagger UI page's policy, allowing exactly the inline scripts it carries."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.encode()).digest()).decode()}'"
        for m in _INLINE_SCRIPT.findall(html)
    )
    return DOCS_CSP.format(scripts=hashes)


def _cors_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    allowed = request.app[SETTINGS].api.cors_origins
    return origin if origin is not None and origin in allowed else None


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: answers CORS preflights and hardens every response."""
    origin = _cors_origin(request)
    if (
        origin is not None
        and request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
    ):
        response: web.StreamResponse = web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_S,
            },
        )
    else:
        response = await handler(request)
    headers = response.headers
    if origin is not None:
        # Bearer tokens only, never cookies: no Allow-Credentials.
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
    if request.app[SETTINGS].api.cors_origins:
        headers.add("Vary", "Origin")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")
    route = request.match_info.route
    if route.name == DOCS_ROUTE and isinstance(response, web.Response) and response.text:
        headers["Content-Security-Policy"] = docs_csp(response.text)
    else:
        headers.setdefault("Content-Security-Policy", API_CSP)
    if request.app[SETTINGS].api.public_url.startswith("https://"):
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    return response
