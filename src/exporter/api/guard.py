"""Bearer-token authentication and scope checks for handlers.

A handler declares the scope it needs with ``@requires(scope)``; ``auth_middleware`` checks
the token before the body is read or validated, so a caller without a valid token learns
nothing about the request's schema (401, never 422) and costs no parsing. The handler then
calls ``authenticate(request, scope)``, which returns the claims already verified.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from aiohttp import web

from exporter.api.hardening import visible_ascii
from exporter.auth import Claims, TokenType
from exporter.errors import Forbidden, TokenError, Unauthorized
from exporter.keys import TOKENS

log = structlog.stdlib.get_logger("exporter.api.guard")

BEARER_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
# The verified claims of this request, with the scope they were checked for.
CLAIMS = web.RequestKey("claims", tuple[str, Claims])
_SCOPE_ATTR = "__exporter_required_scope__"

H = TypeVar("H", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


def requires(scope: str) -> Callable[[H], H]:
    """Mark a handler as needing a bearer token with ``scope``, checked by ``auth_middleware``
    before anything else reads the request."""

    def mark(handler: H) -> H:
        setattr(handler, _SCOPE_ATTR, scope)
        return handler

    return mark


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Authenticate before the body middleware and validation run (401/403 first)."""
    scope = getattr(request.match_info.handler, _SCOPE_ATTR, None)
    if isinstance(scope, str):
        authenticate(request, scope)
    return await handler(request)


def authenticate(request: web.Request, scope: str) -> Claims:
    """The caller's verified access-token claims, if they carry ``scope``; else 401/403."""
    checked: tuple[str, Claims] | None = request.get(CLAIMS)
    if checked is not None and checked[0] == scope:
        return checked[1]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("A bearer access token is required.", code="missing_token")
    if not visible_ascii(token.strip()):
        # Raw bytes >= 0x80 (or controls): no token of ours looks like that.
        log.info("auth.token_rejected", reason="not visible ASCII")
        raise Unauthorized("The access token is invalid or expired.", code="invalid_token")
    try:
        claims = request.app[TOKENS].verify(token.strip(), expected_type=TokenType.ACCESS)
    except TokenError as exc:
        log.info("auth.token_rejected", reason=str(exc))
        raise Unauthorized(
            "The access token is invalid or expired.", code="invalid_token"
        ) from None
    if not claims.has_scope(scope):
        raise Forbidden(f"The token lacks the {scope!r} scope.", code="insufficient_scope")
    structlog.contextvars.bind_contextvars(user_id=claims.subject)
    request[CLAIMS] = (scope, claims)
    return claims
