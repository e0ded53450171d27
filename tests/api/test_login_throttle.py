"""Sign-in throttling per account and per client address, in the real Redis, and answers
that do not tell registered e-mail addresses from unknown ones."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from exporter.app import create_app
from exporter.auth import TokenService
from exporter.config import AuthSettings, Settings
from exporter.dev.ports import free_port
from exporter.throttle import LoginThrottle
from tests.conftest import MakeUser

Client = TestClient[Any, Any]
Api = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture(name="api")
def _fix_api(settings: Settings, tokens: TokenService) -> Api:
    @asynccontextmanager
    async def api(**auth: Any) -> AsyncIterator[Client]:
        changed = settings.model_copy(update={"auth": AuthSettings(**auth)})
        async with TestClient(TestServer(create_app(changed, tokens=tokens))) as client:
            yield client

    return api


async def attempt(client: Client, email: str, password: str, **headers: str) -> Any:
    return await client.post(
        "/v1/auth/token", json={"email": email, "password": password}, headers=headers
    )


async def assert_throttled(response: Any, window_s: int) -> None:
    assert response.status == 429, await response.text()
    assert response.content_type == "application/problem+json"
    assert (await response.json())["code"] == "login_throttled"
    assert 1 <= int(response.headers["Retry-After"]) <= window_s


@pytest.mark.parametrize("known", [True, False], ids=["registered", "unknown"])
async def test_failures_per_account_are_limited_alike_for_known_and_unknown_emails(
    api: Api, make_user: MakeUser, known: bool
) -> None:
    user = await make_user()
    email = user.email if known else "nobody-" + user.email
    async with api(login_max_failures_per_account=3, login_window_s=60) as client:
        for _ in range(3):
            assert (await attempt(client, email, "wrong")).status == 401
        # Even the right password waits: the guesser must not learn it was right.
        await assert_throttled(await attempt(client, email, user.password), 60)
        # Other accounts from the same address are not affected.
        other = await make_user()
        assert (await attempt(client, other.email, other.password)).status == 200


async def test_a_successful_sign_in_clears_the_account_failures(
    api: Api, make_user: MakeUser
) -> None:
    user = await make_user()
    async with api(login_max_failures_per_account=3) as client:
        for _ in range(2):
            assert (await attempt(client, user.email, "wrong")).status == 401
        assert (await attempt(client, user.email, user.password)).status == 200
        for _ in range(2):
            assert (await attempt(client, user.email, "wrong")).status == 401
        assert (await attempt(client, user.email, user.password)).status == 200


async def test_attempts_per_address_are_limited_and_forwarded_for_is_read_from_the_right(
    api: Api, make_user: MakeUser
) -> None:
    user = await make_user()
    async with api(login_max_attempts_per_address=3, trusted_proxy_hops=1) as client:
        for i in range(3):
            # The caller controls everything left of what our proxy appended.
            xff = {"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.7"}
            assert (await attempt(client, f"a{i}@example.com", "x", **xff)).status == 401
        xff = {"X-Forwarded-For": "198.51.100.99, 203.0.113.7"}
        await assert_throttled(await attempt(client, user.email, user.password, **xff), 300)
        other = {"X-Forwarded-For": "203.0.113.8"}
        assert (await attempt(client, user.email, user.password, **other)).status == 200


async def test_without_trusted_proxies_forwarded_for_is_ignored(
    api: Api, make_user: MakeUser
) -> None:
    user = await make_user()
    async with api(login_max_attempts_per_address=2) as client:
        for i in range(2):
            spoof = {"X-Forwarded-For": f"198.51.100.{i}"}
            assert (await attempt(client, f"b{i}@example.com", "x", **spoof)).status == 401
        spoof = {"X-Forwarded-For": "198.51.100.50"}
        await assert_throttled(await attempt(client, user.email, user.password, **spoof), 300)


async def test_redis_down_lets_sign_in_through() -> None:
    """Throttling fails open: an outage of Redis must not lock every user out."""
    redis = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        throttle = LoginThrottle(redis, AuthSettings(), prefix="test")
        await throttle.admit(email="a@example.com", address="127.0.0.1")
        await throttle.record_failure(email="a@example.com")
        await throttle.record_success(email="a@example.com")
    finally:
        await redis.aclose()


@pytest.mark.slow
async def test_unknown_and_registered_emails_take_the_same_time(
    api: Api, make_user: MakeUser
) -> None:
    user = await make_user()
    rounds = 8

    async def timed(client: Client, email: str) -> float:
        started = time.perf_counter()
        response = await attempt(client, email, "wrong-password")
        assert response.status == 401
        return time.perf_counter() - started

    async with api(login_max_failures_per_account=100, login_max_attempts_per_address=100) as c:
        await timed(c, user.email)  # warm up connections
        known, unknown = [], []
        for i in range(rounds):  # interleaved, so drift hits both alike
            known.append(await timed(c, user.email))
            unknown.append(await timed(c, f"nobody-{i}@example.com"))
    ratio = statistics.median(unknown) / statistics.median(known)
    # argon2 dominates both; a missing hash or a skipped read would show as a large gap.
    assert 0.75 < ratio < 1.33, (known, unknown)
