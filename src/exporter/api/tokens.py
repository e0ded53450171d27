"""/v1/auth: exchange credentials or a refresh token for a token pair; publish the JWKS."""

from __future__ import annotations

import structlog
from aiohttp import web

from exporter.api import schemas
from exporter.api.openapi import docs, request_schema, response_schema
from exporter.auth import TokenPair, TokenType
from exporter.errors import ServiceUnavailable, StoreError, TokenError, Unauthorized
from exporter.keys import PASSWORDS, RESOURCES, TOKENS
from exporter.models import User, utcnow

log = structlog.stdlib.get_logger("exporter.api.tokens")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _pair_body(pair: TokenPair) -> dict[str, object]:
    return {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "token_type": pair.token_type,
        "expires_in": pair.expires_in,
    }


async def _user(
    request: web.Request, *, email: str | None = None, user_id: str | None = None
) -> User | None:
    users = request.app[RESOURCES].users
    try:
        if email is not None:
            return await users.get_by_email(email)
        return await users.get(str(user_id))
    except StoreError as exc:
        log.error("auth.user_lookup_failed", error=str(exc))
        raise ServiceUnavailable(
            "Sign-in is unavailable. Please retry.", code="store_unavailable"
        ) from None


@docs(
    tags=["auth"],
    summary="Sign in with e-mail and password",
    responses={
        401: {"schema": schemas.Problem, "description": "Wrong e-mail or password"},
        422: {"schema": schemas.Problem, "description": "Invalid body"},
    },
)
@request_schema(schemas.TokenRequest)
@response_schema(schemas.TokenResponse, 200)
async def issue_token(request: web.Request) -> web.Response:
    body = request["data"]
    user = await _user(request, email=body["email"])
    ok = await request.app[PASSWORDS].verify(user.password_hash if user else None, body["password"])
    if user is None or not ok or not user.active:
        # One answer for unknown e-mail, wrong password and disabled account.
        log.info("auth.login_failed")
        raise Unauthorized("Wrong e-mail or password.", code="invalid_credentials")
    structlog.contextvars.bind_contextvars(user_id=user.user_id)
    pair = request.app[TOKENS].issue_pair(user.user_id, user.scopes, now=utcnow())
    log.info("auth.login")
    return web.json_response(_pair_body(pair), headers=NO_STORE)


@docs(
    tags=["auth"],
    summary="Swap a refresh token for a new token pair",
    responses={
        401: {"schema": schemas.Problem, "description": "Invalid or expired refresh token"},
        422: {"schema": schemas.Problem, "description": "Invalid body"},
    },
)
@request_schema(schemas.RefreshRequest)
@response_schema(schemas.TokenResponse, 200)
async def refresh_token(request: web.Request) -> web.Response:
    tokens = request.app[TOKENS]
    try:
        claims = tokens.verify(request["data"]["refresh_token"], expected_type=TokenType.REFRESH)
    except TokenError as exc:
        log.info("auth.refresh_rejected", reason=str(exc))
        raise Unauthorized(
            "The refresh token is invalid or expired.", code="invalid_token"
        ) from None
    user = await _user(request, user_id=claims.subject)
    if user is None or not user.active:
        raise Unauthorized("The refresh token is invalid or expired.", code="invalid_token")
    pair = tokens.issue_pair(user.user_id, user.scopes, now=utcnow())
    return web.json_response(_pair_body(pair), headers=NO_STORE)


@docs(tags=["auth"], summary="Public keys that verify our tokens (RFC 7517)")
@response_schema(schemas.JwksResponse, 200)
async def jwks(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[TOKENS].jwks(), headers={"Cache-Control": "public, max-age=300"}
    )
