"""The aiohttp internals ``api/http_server.py`` leans on: if an upgrade changes any of them,
these fail before a hostile request finds out (re-read the new code, then update the pins)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from exporter.api.http_server import ApiServer, ProblemRequestHandler

# sha256 (first 16 hex digits) of the source of each aiohttp function we override or
# imitate, at the pinned version.
PINNED_VERSION = "3.14.5"
PINNED_SOURCES = {
    "RequestHandler.handle_error": "94962ffef500c172",
    "RequestHandler._make_error_handler": "b73dcf1dd177a243",
    "RequestHandler.data_received": "1ee57ebe052e6c80",
    "Server.__call__": "c5700549e688b164",
}


def _sources() -> dict[str, str]:
    functions: dict[str, Callable[..., Any]] = {
        "RequestHandler.handle_error": RequestHandler.handle_error,
        "RequestHandler._make_error_handler": RequestHandler._make_error_handler,
        "RequestHandler.data_received": RequestHandler.data_received,
        "Server.__call__": web.Server.__call__,
    }
    return {
        name: hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
        for name, fn in functions.items()
    }


def test_aiohttp_is_the_version_the_override_was_written_for() -> None:
    assert aiohttp.__version__ == PINNED_VERSION


def test_the_overridden_methods_are_unchanged() -> None:
    assert _sources() == PINNED_SOURCES


def test_the_override_keeps_aiohttps_signature() -> None:
    ours = inspect.signature(ProblemRequestHandler.handle_error)
    theirs = inspect.signature(RequestHandler.handle_error)
    assert ours.parameters.keys() == theirs.parameters.keys()
    # The head deadline hands start() one of these, as the parser's refusals do.
    assert list(inspect.signature(_ErrInfo).parameters) == ["status", "exc", "message"]


def test_the_server_builds_our_handler() -> None:
    assert ApiServer.__call__ is not web.Server.__call__
    assert issubclass(ProblemRequestHandler, RequestHandler)
    source = inspect.getsource(web.Server.__call__)
    assert "RequestHandler(self, loop=self._loop, **self._kwargs)" in source
