"""/v1/auth: sign in, rotate refresh tokens (with reuse detection), sign out; publish the JWKS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import structlog
from aiohttp import web

from exporter import audit
from exporter.api import schemas
from exporter.api.openapi import docs, request_schema, response_schema
from exporter.auth import TokenPair, TokenType
from exporter.errors import (
    ConditionFailed,
    ServiceUnavailable,
    StoreError,
    TokenError,
    Unauthorized,
)
from exporter.keys import PASSWORDS, RESOURCES, SETTINGS, TOKENS
from exporter.models import User, utcnow
from exporter.store.refresh_tokens import RefreshRecord, RefreshTokenStore
from exporter.store.users import normalise_email
from exporter.throttle import LoginThrottle, client_address

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


ERRORS_THROTTLED = {
    429: {
        "schema": schemas.Problem,
        "description": "Too many sign-in attempts; `Retry-After` says when to try again",
    },
}
ERRORS_STORE = {
    503: {"schema": schemas.Problem, "description": "A store is unavailable; safe to retry"},
}
INVALID_REFRESH = "The refresh token is invalid or expired."


def _throttle(request: web.Request) -> LoginThrottle:
    settings = request.app[SETTINGS]
    return LoginThrottle(
        request.app[RESOURCES].queue.redis,
        settings.auth,
        prefix=f"{settings.redis.queue_name}:throttle",
    )


def _refresh_store(request: web.Request) -> RefreshTokenStore:
    return RefreshTokenStore(request.app[RESOURCES].dynamo, request.app[SETTINGS].dynamo)


@contextmanager
def _store_unavailable_as_503() -> Iterator[None]:
    try:
        yield
    except StoreError as exc:
        log.error("auth.store_failed", error=str(exc))
        raise ServiceUnavailable(
            "Sign-in is unavailable. Please retry.", code="store_unavailable"
        ) from None


@docs(
    tags=["auth"],
    summary="Sign in with e-mail and password",
    description=(
        "Returns an access token (minutes) and a single-use refresh token. Failed attempts "
        "are limited per account and per client address (429 with `Retry-After`)."
    ),
    responses={
        401: {"schema": schemas.Problem, "description": "Wrong e-mail or password"},
        415: {"schema": schemas.Problem, "description": "Body is not application/json"},
        422: {"schema": schemas.Problem, "description": "Invalid body"},
        **ERRORS_THROTTLED,
        **ERRORS_STORE,
    },
)
@request_schema(schemas.TokenRequest)
@response_schema(schemas.TokenResponse, 200)
async def issue_token(request: web.Request) -> web.Response:
    body = request["data"]
    email = normalise_email(body["email"])
    throttle = _throttle(request)
    address = client_address(
        request, trusted_proxy_hops=request.app[SETTINGS].auth.trusted_proxy_hops
    )
    await throttle.admit(email=email, address=address)
    user = await _user(request, email=email)
    ok = await request.app[PASSWORDS].verify(user.password_hash if user else None, body["password"])
    if user is None or not ok or not user.active:
        # One answer, in the same time, for unknown e-mail, wrong password and disabled account.
        await throttle.record_failure(email=email)
        log.info("auth.login_failed")
        raise Unauthorized("Wrong e-mail or password.", code="invalid_credentials")
    await throttle.record_success(email=email)
    structlog.contextvars.bind_contextvars(user_id=user.user_id)
    pair = request.app[TOKENS].issue_pair(user.user_id, user.scopes, now=utcnow())
    with _store_unavailable_as_503():
        family_id = await _refresh_store(request).start_family(
            pair.refresh_token, user_id=user.user_id, expires_at=pair.refresh_expires_at
        )
    log.info("auth.login", family_id=family_id)
    return web.json_response(_pair_body(pair), headers=NO_STORE)


@docs(
    tags=["auth"],
    summary="Swap a refresh token for a new token pair",
    description=(
        "Each refresh token works once. Presenting one that was already used revokes every "
        "token descended from the same sign-in: sign in again."
    ),
    responses={
        401: {"schema": schemas.Problem, "description": "Invalid, expired or reused token"},
        415: {"schema": schemas.Problem, "description": "Body is not application/json"},
        422: {"schema": schemas.Problem, "description": "Invalid body"},
        **ERRORS_STORE,
    },
)
@request_schema(schemas.RefreshRequest)
@response_schema(schemas.TokenResponse, 200)
async def refresh_token(request: web.Request) -> web.Response:
    tokens, store = request.app[TOKENS], _refresh_store(request)
    presented = request["data"]["refresh_token"]
    try:
        claims = tokens.verify(presented, expected_type=TokenType.REFRESH)
    except TokenError as exc:
        log.info("auth.refresh_rejected", reason=str(exc))
        raise Unauthorized(INVALID_REFRESH, code="invalid_token") from None
    now = utcnow()
    with _store_unavailable_as_503():
        record = await store.get(presented, now=now)
        if record is None or record.user_id != claims.subject:
            log.info("auth.refresh_rejected", reason="no record")
            raise Unauthorized(INVALID_REFRESH, code="invalid_token")
        structlog.contextvars.bind_contextvars(user_id=record.user_id)
        if record.family_revoked:
            log.info("auth.refresh_rejected", reason="family revoked", family_id=record.family_id)
            raise Unauthorized(INVALID_REFRESH, code="invalid_token")
        if record.used or record.forked:
            # forked: an unused token that is not its family's newest, because the same
            # token was refreshed in the other region too (last writer wins kept the other
            # successor). Reuse, whichever copy is the owner's (store/refresh_tokens.py).
            await _reused(store, record)
        if record.family_behind:
            # Refreshed a moment ago in the other region; that write has not arrived here.
            log.info("auth.refresh_deferred", family_id=record.family_id)
            raise ServiceUnavailable(
                "Your session is being updated. Please retry.", code="replication_pending"
            )
        user = await _user(request, user_id=claims.subject)
        if user is None or not user.active:
            await store.revoke_family(record.family_id)
            log.info("auth.refresh_rejected", reason="user unavailable")
            raise Unauthorized(INVALID_REFRESH, code="invalid_token")
        pair = tokens.issue_pair(user.user_id, user.scopes, now=now)
        try:
            await store.rotate(
                presented,
                pair.refresh_token,
                record=record,
                new_expires_at=pair.refresh_expires_at,
                now=now,
            )
        except ConditionFailed:
            # Lost a race: a parallel refresh spent the token (reuse) or revoked the family.
            again = await store.get(presented, now=now)
            if again is not None and again.used and not again.family_revoked:
                await _reused(store, again)
            raise Unauthorized(INVALID_REFRESH, code="invalid_token") from None
    log.info("auth.refreshed", family_id=record.family_id)
    return web.json_response(_pair_body(pair), headers=NO_STORE)


async def _reused(store: RefreshTokenStore, record: RefreshRecord) -> NoReturn:
    """A spent token came back: whoever holds the family's tokens, it is not only its owner."""
    await store.revoke_family(record.family_id)
    audit.security_event("refresh_token_reused", user_id=record.user_id, family_id=record.family_id)
    raise Unauthorized(INVALID_REFRESH, code="invalid_token")


@docs(
    tags=["auth"],
    summary="Sign out: revoke the refresh token and every token of its sign-in",
    description=(
        "Answers 204 whether or not the token was valid (RFC 7009), so it reveals nothing. "
        "Access tokens already issued stay valid until they expire (minutes)."
    ),
    responses={
        204: {"description": "Revoked, or nothing to revoke"},
        415: {"schema": schemas.Problem, "description": "Body is not application/json"},
        422: {"schema": schemas.Problem, "description": "Invalid body"},
        **ERRORS_STORE,
    },
)
@request_schema(schemas.RefreshRequest)
async def logout(request: web.Request) -> web.Response:
    presented = request["data"]["refresh_token"]
    try:
        request.app[TOKENS].verify(presented, expected_type=TokenType.REFRESH)
    except TokenError as exc:
        log.info("auth.logout_ignored", reason=str(exc))
        return web.Response(status=204, headers=NO_STORE)
    store = _refresh_store(request)
    with _store_unavailable_as_503():
        record = await store.get(presented, now=utcnow())
        if record is not None:
            revoked = await store.revoke_family(record.family_id)
            structlog.contextvars.bind_contextvars(user_id=record.user_id)
            log.info("auth.logout", family_id=record.family_id, revoked=revoked)
    return web.Response(status=204, headers=NO_STORE)


@docs(tags=["auth"], summary="Public keys that verify our tokens (RFC 7517)")
@response_schema(schemas.JwksResponse, 200)
async def jwks(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[TOKENS].jwks(), headers={"Cache-Control": "public, max-age=300"}
    )
