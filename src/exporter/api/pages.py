"""Pages for people: the self-service page at ``/``, its two assets, and the small HTML pages
a browser gets when a download link cannot give it the file.

Everything is static package data (``exporter/web/static``), read once; the page talks to the
public API only. Scripts and styles come from this origin alone (no inline script or style),
which the policies below enforce.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from importlib import resources

import structlog
from aiohttp import web

from exporter.errors import ApiError

# The self-service page: its own script, style and API calls; nothing inline, no frames.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# A message page: a stylesheet and nothing else.
MESSAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HOME_PATH = "/"
ASSETS_PREFIX = "/assets/"
# Served files and their types; anything else under /assets/ is a 404.
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_JSON_TYPES = ("application/json", "application/problem+json")


@functools.cache
def _static(name: str) -> bytes:
    return resources.files("exporter.web").joinpath("static", name).read_bytes()


def _page_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }


async def home(request: web.Request) -> web.Response:
    """The self-service page: sign in, ask for an export, watch it, download it."""
    return web.Response(
        body=_static("index.html"),
        content_type="text/html",
        charset="utf-8",
        headers=_page_headers(PAGE_CSP),
    )


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=_static(name),
        content_type=content_type,
        charset="utf-8",
        # Revalidate each time: a deploy changes them, and they are small.
        headers={"Cache-Control": "no-cache"},
    )


def prefers_html(request: web.Request) -> bool:
    """Whether the client asked for HTML over JSON (a browser following a link). ``*/*`` or
    no Accept at all is an API client: it keeps problem+json."""
    best_html = best_json = 0.0
    for part in request.headers.get("Accept", "").split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media in _HTML_TYPES:
            best_html = max(best_html, q)
        elif media in _JSON_TYPES:
            best_json = max(best_json, q)
    return best_html > 0 and best_html >= best_json


@dataclass(frozen=True, slots=True)
class _Message:
    title: str
    what: str
    next: str


_NEW_EXPORT = "Sign in to ask for a new export; it takes a minute or two."
MESSAGES: dict[str, _Message] = {
    "link_not_found": _Message(
        "This download link does not work",
        "The link is not one we made, or it was cut short when it was copied from the email.",
        "Open the link again straight from the email. If it still fails, sign in to download "
        "the file or to ask for a new export.",
    ),
    "link_expired": _Message(
        "This download link has expired",
        "Export files are kept for a few days only; this one has been deleted.",
        _NEW_EXPORT,
    ),
    "export_expired": _Message(
        "This export has expired",
        "Export files are kept for a few days only; this one has been deleted.",
        _NEW_EXPORT,
    ),
    "export_cancelled": _Message(
        "This export was cancelled",
        "Its file was deleted and every link to it stopped working.",
        _NEW_EXPORT,
    ),
    "export_failed": _Message("This export failed", "There is no file to download.", _NEW_EXPORT),
    "export_not_ready": _Message(
        "This export is not ready yet",
        "The file is still being made.",
        "Try the link again in a minute, or sign in to watch its progress.",
    ),
    "no_download": _Message(
        "This export has no file to download",
        "It was small enough to be sent to your email as an attachment.",
        "Look for the attachment in the email, or sign in to ask for a new export.",
    ),
}
_UNAVAILABLE = _Message(
    "We cannot fetch your file right now",
    "A service we depend on did not answer.",
    "Please try the link again in a minute.",
)


def error_page(exc: ApiError) -> web.Response:
    """``exc`` as a small page a person can act on, with the same status and headers."""
    message = MESSAGES.get(exc.code) or (
        _UNAVAILABLE if exc.status == 503 else _Message(exc.title, exc.detail, _NEW_EXPORT)
    )
    request_id = structlog.contextvars.get_contextvars().get("request_id", "")
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{html.escape(message.title)} · Exporter</title>
<link rel="stylesheet" href="{ASSETS_PREFIX}app.css">
</head>
<body>
<main class="page message">
<h1>{html.escape(message.title)}</h1>
<p>{html.escape(message.what)}</p>
<p>{html.escape(message.next)}</p>
<p><a class="button" href="{HOME_PATH}">Go to your exports</a></p>
<p class="fineprint">Error {exc.status} · {html.escape(exc.code)} · request \
{html.escape(str(request_id))}</p>
</main>
</body>
</html>
"""
    return web.Response(
        text=body,
        status=exc.status,
        content_type="text/html",
        charset="utf-8",
        headers={**exc.headers, **_page_headers(MESSAGE_CSP)},
    )
