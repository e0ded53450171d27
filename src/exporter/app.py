"""The aiohttp application factory: middlewares, routes, OpenAPI, and the client lifecycle."""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import structlog
from aiohttp import web
from aiohttp_apigami import OpenApiVersion, setup_aiohttp_apispec, validation_middleware
from aiohttp_apigami.constants import SWAGGER_DICT
from marshmallow import ValidationError

from exporter import __version__
from exporter.api import schedule_links
from exporter.api.access_log import RedactingAccessLogger
from exporter.api.guard import auth_middleware
from exporter.api.hardening import (
    parse_json_body,
    read_body,
    safe_name,
    unambiguous_query_middleware,
)
from exporter.api.metrics import metrics_middleware
from exporter.api.openapi import Handler, document_problems
from exporter.api.routes import setup_routes
from exporter.api.security import security_headers_middleware
from exporter.auth import TokenService, build_token_service
from exporter.config import Settings
from exporter.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from exporter.keys import PASSWORDS, RESOURCES, SETTINGS, TOKENS
from exporter.passwords import Passwords
from exporter.resources import open_resources

log = structlog.stdlib.get_logger("exporter.api")

PROBLEM_JSON = "application/problem+json"
DOCS_PATH = "/api/docs"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Request ids we accept from callers: short and printable, so they are safe in logs.
_MAX_REQUEST_ID = 128
MAX_REQUEST_LINE = 16 * 1024


def problem_response(error: ApiError) -> web.Response:
    return web.Response(
        text=json.dumps(error.body()),
        status=error.status,
        content_type=PROBLEM_JSON,
        headers=error.headers,
    )


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    mapping: Mapping[int, type[ApiError]] = {
        400: BadRequest,
        404: NotFound,
        405: MethodNotAllowed,
        413: PayloadTooLarge,
        415: UnsupportedMediaType,
        422: ValidationFailed,
    }
    cls = mapping.get(exc.status)
    if cls is None:
        error = ApiError(exc.reason)
        error.status, error.code, error.title = exc.status, "http_error", exc.reason
        return error
    if cls is NotFound:
        return NotFound("No such resource.")
    if cls is MethodNotAllowed:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return MethodNotAllowed(
            "Method not allowed on this resource.", headers={"Allow": allowed} if allowed else None
        )
    if cls is PayloadTooLarge:
        return PayloadTooLarge("The request body is too large.")
    return cls()


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id, write one summary log line, and add security headers."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = (
        incoming
        if incoming and len(incoming) <= _MAX_REQUEST_ID and incoming.isprintable()
        else uuid.uuid4().hex
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:  # redirects pass through the error middleware
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        log.info(
            "http.request",
            method=request.method,
            route=route.canonical if route is not None else None,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
    response.headers["X-Request-ID"] = request_id
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as application/problem+json; internals never reach the client."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http_exception(exc))
    except Exception:
        log.exception("http.unhandled")
        return problem_response(ApiError("An unexpected error occurred."))


@web.middleware
async def json_body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse non-JSON and malformed JSON bodies before schema validation sees them."""
    if (
        request.method in _BODY_METHODS
        and request.can_read_body
        # RFC 8058 one-click: a form POST, read (and ignored) by its handler.
        and request.match_info.route.name != schedule_links.PAUSE_ROUTE
    ):
        if request.content_type != "application/json":
            raise UnsupportedMediaType("Send the body as application/json.")
        # Bounded by client_max_size (413 past it) and by the body deadline (408).
        raw = await read_body(request, timeout_s=request.app[SETTINGS].api.body_timeout_s)
        body = parse_json_body(raw) if raw.strip() else None
        if body is not None and not isinstance(body, dict):
            raise ValidationFailed(
                "The body must be a JSON object.",
                errors=[{"field": "$", "message": "Expected an object.", "location": "json"}],
            )
    return await handler(request)


def _validation_error(
    error: ValidationError,
    req: Any,
    schema: Any,
    *,
    error_status_code: Any = None,
    error_headers: Any = None,
) -> NoReturn:
    """webargs' error hook: turn marshmallow field errors into one 422 problem."""
    details: list[dict[str, str]] = []

    def walk(messages: Any, location: str, prefix: str) -> None:
        if isinstance(messages, dict):
            for key, value in messages.items():
                # Field names are named back only when they are plain identifiers: an
                # unknown field's name is the caller's input, and nothing else is echoed.
                name = safe_name(str(key)) or "(unnamed)"
                walk(value, location, f"{prefix}.{name}" if prefix else name)
        elif isinstance(messages, list):
            details.extend(
                {"field": prefix or "$", "message": str(m), "location": location} for m in messages
            )

    for location, messages in (error.messages if isinstance(error.messages, dict) else {}).items():
        walk(messages, str(location), "")
    raise ValidationFailed("The request is not valid.", errors=details)


def create_app(settings: Settings, *, tokens: TokenService | None = None) -> web.Application:
    """Build the API. Clients open on startup and close on cleanup (``cleanup_ctx``)."""
    app = web.Application(
        client_max_size=settings.api.max_body_bytes,
        # Room for the longest valid query (a 1024-character cursor, percent-encoded), so
        # such requests reach validation and get a problem, not the parser's plain 400.
        # The access log (when a runner turns it on) redacts download links' tokens.
        handler_args={
            "max_line_size": MAX_REQUEST_LINE,
            "access_log_class": RedactingAccessLogger,
        },
        middlewares=[
            metrics_middleware,  # outermost: sees the status the client gets
            security_headers_middleware,
            request_context_middleware,
            errors_middleware,
            auth_middleware,  # 401/403 before the body or query is read or validated
            unambiguous_query_middleware,
            json_body_middleware,
            validation_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[TOKENS] = tokens or build_token_service(
        settings.jwt, allow_ephemeral=not settings.is_deployed
    )
    app[PASSWORDS] = Passwords()

    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_resources(settings, pg_min_size=0, export_reads=False) as resources:
            app[RESOURCES] = resources
            yield

    app.cleanup_ctx.append(resources_ctx)
    setup_routes(app)
    # aiohttp-apigami 0.x keeps its state under plain string keys (app and request); its
    # business, not a log line per request.
    warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_apigami")
    _setup_openapi(app)
    return app


def _setup_openapi(app: web.Application) -> None:
    """OpenAPI 3 document at /api/docs/openapi.json and Swagger UI at /api/docs."""
    setup_aiohttp_apispec(
        app,
        title="exporter API",
        version=__version__,
        url=f"{DOCS_PATH}/openapi.json",
        swagger_path=DOCS_PATH,
        openapi_version=OpenApiVersion.V302,
        in_place=True,  # build the spec now, from the routes above
        error_callback=_validation_error,
        info={
            "description": (
                "Ask for an export of your memberships as CSV (`csv`, `csv.gz`), JSON "
                "Lines (`jsonl`), Parquet (`parquet`) or an Excel workbook (`xlsx`): all "
                "columns or the ones you name, every row or filtered by status, plan and "
                "dates, with timestamps in your time zone. It is produced in the background "
                "and emailed to you, and kept for download. Sign in at `POST /v1/auth/token`, "
                "then use **Authorize** with the access token. The same options are on the "
                "self-service page at `/`."
            )
        },
        components={
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        },
    )
    spec = app[SWAGGER_DICT]
    _drop_produces(spec)
    document_problems(spec)


def _drop_produces(spec: dict[str, Any]) -> None:
    """aiohttp-apigami's ``docs`` always records Swagger 2's ``produces`` on the operation and
    copies it into OpenAPI 3 documents too, where it is not allowed; drop it."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("produces", None)
