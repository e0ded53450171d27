"""Hostile input at the request layer: the body read under a deadline, JSON that parses one
way only, query strings without repeated parameters, header values that are plain ASCII.

Each refusal is an ``ApiError`` with a stable code and a fixed message: nothing of the
request is echoed back, except a field or parameter name that is a plain identifier.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from exporter.errors import BadRequest, ClientClosedRequest, RequestTimeout

log = structlog.stdlib.get_logger("exporter.api.hardening")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Our request bodies are flat objects; nothing legitimate nests deeper than a few levels.
# The bound also keeps every later recursive walk (validation, logging) far from the
# interpreter's recursion limit.
MAX_JSON_DEPTH = 32
_SAFE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def safe_name(name: str) -> str | None:
    """``name`` if it is a plain identifier that is safe to show back; else None."""
    return name if _SAFE_NAME.fullmatch(name) else None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__("duplicate key")
        self.key = key


class _NotJson(ValueError):
    """NaN, Infinity and -Infinity: Python's extensions, not JSON (RFC 8259)."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise _NotJson(name)


def _malformed() -> BadRequest:
    return BadRequest("The body is not valid JSON.", code="malformed_json")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a \ud800-style escape
        return False
    return True


def _check_tree(value: Any) -> None:
    """Bound the nesting and refuse text that is not Unicode (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                raise _invalid_text()
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            if isinstance(item, dict):
                for key, child in item.items():
                    if not _encodable(key):
                        raise _invalid_text()
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _too_deep() -> BadRequest:
    return BadRequest(
        f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.", code="json_too_deep"
    )


def _invalid_text() -> BadRequest:
    return BadRequest(
        "The JSON body holds a string that is not valid Unicode (an unpaired surrogate "
        "escape such as \\ud800).",
        code="invalid_json_text",
    )


def parse_json_body(raw: bytes) -> Any:
    """The body as JSON, or a 400 that says precisely why not: not UTF-8 JSON
    (``malformed_json``), a key repeated in one object (``duplicate_json_key``), nested past
    ``MAX_JSON_DEPTH`` (``json_too_deep``), a lone surrogate (``invalid_json_text``)."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        name = safe_name(exc.key)
        shown = f" ({name!r})" if name else ""
        raise BadRequest(
            f"The JSON body repeats a key{shown} within one object; each key may appear once.",
            code="duplicate_json_key",
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise _malformed() from None
    _check_tree(value)
    return value


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def read_body(request: web.Request, *, timeout_s: float) -> bytes:
    """The whole body within ``timeout_s`` (a slow sender gets 408 and the connection is
    closed after the answer); a client that disconnects mid-body is a 499, not an error."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        log.info("http.body_timeout", timeout_s=timeout_s)
        request.protocol.close()  # no further requests on this connection
        raise RequestTimeout(
            f"The request body did not arrive within {timeout_s:g} seconds.", code="body_timeout"
        ) from None
    except (ConnectionError, RequestPayloadError) as exc:
        if isinstance(exc, ConnectionError) or _client_gone(request):
            log.info("http.client_disconnected", during="body")
            raise ClientClosedRequest(
                "The client closed the connection before sending the whole body."
            ) from None
        # The parser refused the body's framing (chunk sizes, length, encoding).
        log.info("http.bad_body_framing", error=type(exc.__cause__ or exc).__name__)
        request.protocol.close()
        raise BadRequest(
            "The request body is not framed as its headers say.", code="bad_http_request"
        ) from None


@web.middleware
async def unambiguous_query_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """A query parameter given twice is refused, not resolved by a guess (first or last)."""
    seen: set[str] = set()
    for name, _ in request.query.items():  # keys() lists a repeated name once
        if name in seen:
            shown = safe_name(name)
            raise BadRequest(
                f"The query parameter {shown!r} is repeated; give it once."
                if shown
                else "A query parameter is repeated; give each once.",
                code="repeated_query_parameter",
            )
        seen.add(name)
    return await handler(request)


def visible_ascii(value: str) -> bool:
    """True for header material we can handle as text: printable ASCII only. aiohttp decodes
    header bytes as UTF-8 with surrogate escapes, so raw bytes >= 0x80 arrive as text that
    cannot be encoded again."""
    return value.isascii() and value.isprintable()
