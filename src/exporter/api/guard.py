"""Bearer-token authentication and scope checks for handlers."""

from __future__ import annotations

import structlog
from aiohttp import web

from exporter.api.hardening import visible_ascii
from exporter.auth import Claims, TokenType
from exporter.errors import Forbidden, TokenError, Unauthorized
from exporter.keys import TOKENS

log = structlog.stdlib.get_logger("exporter.api.guard")

BEARER_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def authenticate(request: web.Request, scope: str) -> Claims:
    """The caller's verified access-token claims, if they carry ``scope``; else 401/403."""
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
    return claims
