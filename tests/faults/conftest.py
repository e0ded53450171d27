"""Fixtures of the fault-injection suite: real processes, real services, faults on demand."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from exporter.auth import DEFAULT_SCOPES, TokenService
from exporter.config import Settings
from exporter.models import User, utcnow
from exporter.resources import Resources
from exporter.store.seed import seed_memberships
from exporter.store.users import UserStore
from tests.faults.stack import FaultySmtp, Processes, process_env

# The one user with a large export (kill -9, SIGTERM and pg_terminate_backend need an export
# still streaming when they strike): enough rows that COPY + gzip take a visible while.
BIG_EXPORT_ROWS = 150_000


@pytest.fixture(name="faulty_smtp")
def _fix_faulty_smtp(tmp_path: Path) -> Iterator[FaultySmtp]:
    smtp = FaultySmtp(tmp_path / "outbox")
    smtp.up()
    yield smtp
    smtp.down()


@pytest.fixture(name="fault_settings")
def _fix_fault_settings(settings: Settings, faulty_smtp: FaultySmtp) -> Settings:
    return settings.model_copy(
        update={"smtp": settings.smtp.model_copy(update={"port": faulty_smtp.port})}
    )


@pytest.fixture(name="procs")
def _fix_procs(fault_settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = Processes(env=process_env(fault_settings), logs=logs)
    yield processes
    processes.stop_all()


MakeUsers = Callable[[int], Awaitable[list[User]]]


async def create_users(settings: Settings, dynamo: Any, count: int) -> list[User]:
    """Users straight into DynamoDB (no password: tests mint their tokens)."""
    store = UserStore(dynamo, settings.dynamo)
    users = [
        User(
            user_id=str(uuid.uuid4()),
            email=f"fault-{uuid.uuid4().hex[:12]}@example.com",
            password_hash="!",  # matches no password
            active=True,
            scopes=tuple(DEFAULT_SCOPES),
            created_at=utcnow(),
        )
        for _ in range(count)
    ]
    for start in range(0, count, 25):
        await asyncio.gather(*(store.create(u) for u in users[start : start + 25]))
    return users


@pytest.fixture(name="make_users")
def _fix_make_users(resources: Resources) -> MakeUsers:
    async def make(count: int) -> list[User]:
        return await create_users(resources.settings, resources.dynamo, count)

    return make


@pytest.fixture(name="big_user", scope="session")
async def _fix_big_user(base_settings: Settings, pg_dsn: str) -> User:
    from exporter.aws import open_dynamo

    async with open_dynamo(base_settings.dynamo) as dynamo:
        (user,) = await create_users(base_settings, dynamo, 1)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await seed_memberships(conn, user.user_id, BIG_EXPORT_ROWS)
    finally:
        await conn.close()
    return user


@pytest.fixture(name="api")
async def _fix_api(tokens: TokenService) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(http, tokens)


class Api:
    """Calls the API process as a user would, with a token minted for that user."""

    def __init__(self, http: aiohttp.ClientSession, tokens: TokenService) -> None:
        self.http = http
        self.tokens = tokens
        self.base = ""

    def headers(self, user: User) -> dict[str, str]:
        pair = self.tokens.issue_pair(user.user_id, DEFAULT_SCOPES, now=utcnow())
        return {"Authorization": f"Bearer {pair.access_token}"}

    async def create(self, user: User, fmt: str = "csv") -> tuple[int, dict[str, Any]]:
        async with self.http.post(
            f"{self.base}/v1/exports", json={"format": fmt}, headers=self.headers(user)
        ) as response:
            return response.status, await response.json(content_type=None)
