"""Sign-in throttling in Redis: fixed windows per account and per client address.

Per account it counts failures, keyed by a hash of the normalised e-mail whether or not the
account exists, so the limit itself says nothing about which addresses are registered. Per
client address it counts every attempt. Counters live in the Redis the queue uses, so all API
processes share them. If Redis cannot answer, sign-in goes on unthrottled (logged): argon2's
cost still bounds guessing, and refusing every sign-in would turn a Redis outage into a full
outage.
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from exporter.config import AuthSettings
from exporter.errors import TooManyRequests

log = structlog.stdlib.get_logger("exporter.throttle")


def client_address(request: web.Request, *, trusted_proxy_hops: int) -> str:
    """The caller's address: the TCP peer, or the entry our own proxies added to
    X-Forwarded-For (counted from the right; anything further left is caller-controlled)."""
    if trusted_proxy_hops > 0:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        hops = [h for h in hops if h and h.isascii() and h.isprintable()]
        if len(hops) >= trusted_proxy_hops:
            return hops[-trusted_proxy_hops][:64]
    return request.remote or "unknown"


class LoginThrottle:
    def __init__(self, redis: Any, settings: AuthSettings, *, prefix: str) -> None:
        self._redis = redis
        self._settings = settings
        self._prefix = prefix

    def _account_key(self, email: str) -> str:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return f"{self._prefix}:login:account:{digest}"

    def _address_key(self, address: str) -> str:
        return f"{self._prefix}:login:address:{address}"

    async def admit(self, *, email: str, address: str) -> None:
        """Count this attempt; ``TooManyRequests`` if the address or the account is over its
        limit. Called before the password is checked, so refused attempts cost no hashing."""
        cfg = self._settings
        account_key, address_key = self._account_key(email), self._address_key(address)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(address_key)
                pipe.expire(address_key, cfg.login_window_s, nx=True)
                pipe.ttl(address_key)
                pipe.get(account_key)
                pipe.ttl(account_key)
                attempts, _, address_ttl, failures, account_ttl = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.error("auth.throttle_unavailable", error=type(exc).__name__)
            return
        if int(attempts) > cfg.login_max_attempts_per_address:
            log.warning("security.login_throttled", scope="address")
            raise TooManyRequests(
                "Too many sign-in attempts. Please wait before trying again.",
                retry_after_s=int(address_ttl),
                code="login_throttled",
            )
        if failures is not None and int(failures) >= cfg.login_max_failures_per_account:
            log.warning("security.login_throttled", scope="account")
            raise TooManyRequests(
                "Too many sign-in attempts. Please wait before trying again.",
                retry_after_s=int(account_ttl),
                code="login_throttled",
            )

    async def record_failure(self, *, email: str) -> None:
        key = self._account_key(email)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, self._settings.login_window_s, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.error("auth.throttle_unavailable", error=type(exc).__name__)

    async def record_success(self, *, email: str) -> None:
        """A correct password clears the account's failures (the address count stays)."""
        try:
            await self._redis.delete(self._account_key(email))
        except (RedisError, OSError) as exc:
            log.error("auth.throttle_unavailable", error=type(exc).__name__)
