"""The API's HTTP server: aiohttp's, with its own answers made RFC 9457 problems.

aiohttp's HTTP parser refuses malformed requests (over-long lines and headers, too many
headers, bad ``Content-Length``, unknown methods and versions...) before any middleware runs.
Its ``RequestHandler.handle_error`` (aiohttp/web_protocol.py) then answers ``text/plain``
with the parser's message, which quotes the offending bytes, and logs a traceback at error
level. aiohttp offers no hook for that answer (``handler_args`` only passes constructor
arguments), so this module overrides that one method in a ``RequestHandler`` subclass, built
for each connection by a ``Server`` subclass that an ``AppRunner`` subclass returns from its
``_make_server`` factory. The same subclass enforces a deadline on a request's head.

``cmd_api`` (``exporter api``) serves through ``serve()``; tests use ``ApiRunner`` directly.
``tests/api/test_http_server.py`` pins the aiohttp internals this leans on and fails if
aiohttp changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from exporter.api.security import API_CSP
from exporter.config import ApiSettings
from exporter.errors import ApiError, BadRequest, HeadersTooLarge, RequestTimeout, UriTooLong
from exporter.metrics import observe_http_request

log = structlog.stdlib.get_logger("exporter.api.http")

PROBLEM_JSON = "application/problem+json"
# Behind the ALB (idle timeout 60 s) a backend must keep idle connections open longer than
# the balancer does, or the ALB reuses a connection we are closing (502s).
KEEPALIVE_TIMEOUT_S = 75.0
Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]
# Route label of requests the parser refused: they never matched a route.
UNPARSED_ROUTE = "unparsed"


class HeaderTimeout(HttpProcessingError):
    """A request's head did not arrive in time (raised by us, handled like a parser error)."""


def parser_problem(
    exc: BaseException | None, *, max_line_size: int, max_field_size: int
) -> ApiError:
    """The problem that answers a request aiohttp's parser refused. The text is fixed per
    kind: the parser's own message quotes the request, so it is never used."""
    if isinstance(exc, HeaderTimeout):
        return RequestTimeout(
            "The request's headers did not arrive in time.", code="header_timeout"
        )
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size and max_line_size != max_field_size:
            return UriTooLong(
                f"The request line is longer than {max_line_size} bytes.",
                code="request_line_too_long",
            )
        return HeadersTooLarge(
            f"A request header is longer than {max_field_size} bytes.", code="header_too_large"
        )
    # The C parser (llhttp) raises a plain BadHttpMessage for most refusals; its message
    # starts with llhttp's fixed description of the error, then quotes the request. Only
    # that description is read, to pick the kind.
    what = exc.message.split(":\n", 1)[0].lower() if isinstance(exc, BadHttpMessage) else ""
    if "too many headers" in what:
        return HeadersTooLarge("The request has too many header fields.", code="too_many_headers")
    if "content-length" in what and "transfer-encoding" in what:
        # Request smuggling's classic shape: two ways to find the end of the body.
        return BadRequest(
            "Content-Length and Transfer-Encoding may not both be sent.",
            code="content_length_with_chunked",
        )
    if isinstance(exc, ContentLengthError) or "content-length" in what:
        return BadRequest("The Content-Length header is not valid.", code="bad_content_length")
    if isinstance(exc, TransferEncodingError) or "transfer-encoding" in what or "chunk" in what:
        return BadRequest(
            "The Transfer-Encoding header or the chunked body is not valid.",
            code="bad_transfer_encoding",
        )
    if isinstance(exc, BadHttpMethod):
        return BadRequest("The request method is not valid HTTP.", code="bad_http_method")
    if isinstance(exc, InvalidURLError):
        return BadRequest("The request target is not a valid URL.", code="bad_request_target")
    if isinstance(exc, BadStatusLine):
        return BadRequest("The request line is not valid HTTP/1.x.", code="bad_request_line")
    if isinstance(exc, InvalidHeader) or "header" in what:
        return BadRequest("A header line is not valid HTTP.", code="invalid_header")
    return BadRequest("The request is not valid HTTP.", code="bad_http_request")


def problem_response(error: ApiError) -> web.Response:
    """A problem that closes the connection, with the headers every API answer carries."""
    response = web.Response(
        text=json.dumps(error.body()), status=error.status, content_type=PROBLEM_JSON
    )
    response.headers.update(error.headers)
    response.headers.update(
        {
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Content-Security-Policy": API_CSP,
        }
    )
    response.force_close()
    return response


def _expectation_failed() -> ApiError:
    error = BadRequest("Only 'Expect: 100-continue' is supported.", code="expectation_failed")
    error.status, error.title = 417, "Expectation Failed"
    return error


def _refused(error: ApiError, reason: str) -> web.Response:
    log.warning("http.rejected", status=error.status, code=error.code, reason=reason)
    observe_http_request("-", UNPARSED_ROUTE, error.status, 0.0)
    return problem_response(error)


def answer_early_exits_as_problems(handler: Handler) -> Handler:
    """Wrap the application's handler for what aiohttp does before the middleware chain:
    its ``Expect`` handler answers an unknown expectation 417 ``text/plain`` quoting the
    header (and fails with a 500 on non-UTF-8 bytes), so the header is checked here first;
    any other ``HTTPException`` raised there becomes a problem too."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            return _refused(_expectation_failed(), "Expect")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = BadRequest(exc.reason, code="http_error")  # the reason phrase: fixed text
            error.status, error.title = exc.status, exc.reason
            return _refused(error, type(exc).__name__)

    return handle


class ProblemRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with problem+json error answers and a head deadline."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None

    # --- aiohttp override: see the module docstring --------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Called by aiohttp for a request its parser refused (status 400, ``exc`` the
        parser's error), and for an exception that escaped every middleware (500, 504)."""
        if status >= 500:
            # Not the client's doing: errors_middleware turns every exception into a
            # problem, so reaching this is a bug worth a traceback.
            log.error("http.unhandled", status=status, exc_info=exc)
            error = ApiError("An unexpected error occurred.")
        else:
            error = parser_problem(
                exc, max_line_size=self.max_line_size, max_field_size=self.max_field_size
            )
            # One line, no traceback, nothing of the request (the parser's message quotes it).
            log.warning(
                "http.rejected", status=error.status, code=error.code, reason=type(exc).__name__
            )
        observe_http_request("-", UNPARSED_ROUTE, error.status, 0.0)
        if request.writer.output_size > 0:
            # As aiohttp does: part of a response is out, another cannot follow.
            raise ConnectionError("response already started; cannot send the error")
        return problem_response(error)

    # --- the head deadline ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiter = self._waiter  # set while start() waits for the next request's head
        waiting = waiter is not None and not waiter.done()
        if waiting and data and not self._messages:
            if self._header_deadline is None:
                self._header_deadline = self._loop.call_later(
                    self._header_timeout_s, self._head_timed_out
                )
        elif self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._header_deadline = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages or self.transport is None:
            return
        # Hand start() a parser error of our own: it answers through handle_error (408
        # problem) and closes the connection, exactly as for any other refused request.
        log.info("http.header_timeout", timeout_s=self._header_timeout_s)
        self._request_count += 1
        self._messages.append(
            (_ErrInfo(status=408, exc=HeaderTimeout(), message=""), EMPTY_PAYLOAD)
        )
        waiter.set_result(None)


class ApiServer(web.Server):
    """aiohttp's low-level server, building a ``ProblemRequestHandler`` per connection."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        # What web.Server.__call__ does, with our class.
        return ProblemRequestHandler(
            self, loop=self._loop, header_timeout_s=self.header_timeout_s, **self._kwargs
        )


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers parser errors as problems."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        # AppRunner's factory runs the app's startup and builds a web.Server with every
        # handler argument resolved; rebuild it as an ApiServer with the same arguments.
        server = await super()._make_server()
        return ApiServer(
            answer_early_exits_as_problems(server.request_handler),
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            header_timeout_s=self._header_timeout_s,
            **server._kwargs,
        )


def build_runner(app: web.Application, api: ApiSettings, **kwargs: Any) -> ApiRunner:
    """The runner production uses: no aiohttp access log (one structlog line per request
    instead), the ALB-friendly keep-alive, the graceful-shutdown bound, the head deadline."""
    return ApiRunner(
        app,
        access_log=None,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
        shutdown_timeout=api.shutdown_timeout_s,
        header_timeout_s=api.header_timeout_s,
        **kwargs,
    )


def serve(app: web.Application, *, host: str, port: int, api: ApiSettings) -> None:
    """Serve until SIGINT/SIGTERM, as ``web.run_app`` does: on a signal stop listening, let
    in-flight requests finish for ``shutdown_timeout_s``, then run the app's cleanup."""

    async def main() -> None:
        runner = build_runner(app, api, handle_signals=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()  # until a signal cancels this task
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
