"""Probes: liveness says the process runs; readiness checks every dependency."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from arq.connections import ArqRedis
from pydantic import SecretStr

from exporter.api.health import PROBE_TIMEOUT_S
from exporter.app import create_app
from exporter.auth import TokenService
from exporter.config import Settings
from exporter.dev.ports import free_port
from exporter.keys import RESOURCES
from exporter.queue import ExportQueue

Client = TestClient[Any, Any]
ApiWith = Callable[[Settings], AbstractAsyncContextManager[Client]]


async def test_healthz_is_ok(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json()) == {"status": "ok"}


async def test_readyz_checks_postgres_redis_and_dynamodb(client: TestClient[Any, Any]) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok", "dynamodb": "ok"}}


async def test_readyz_names_the_dependency_that_failed(client: TestClient[Any, Any]) -> None:
    resources = client.app[RESOURCES]
    dead = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    client.app._state[RESOURCES] = dataclasses.replace(
        resources, queue=ExportQueue(dead, queue_name="unused")
    )
    try:
        response = await client.get("/readyz")
    finally:
        client.app._state[RESOURCES] = resources
        await dead.aclose()
    assert response.status == 503
    body = await response.json()
    assert body["checks"]["redis"].startswith("failed")
    assert body["checks"]["postgres"] == "ok"


async def test_readyz_answers_within_its_timeout_when_a_dependency_hangs(
    client: TestClient[Any, Any],
) -> None:
    """A Redis that accepts connections but never answers must not hang the probe."""

    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # hold the connection open, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    resources = client.app[RESOURCES]
    hung = ArqRedis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    client.app._state[RESOURCES] = dataclasses.replace(
        resources, queue=ExportQueue(hung, queue_name="unused")
    )
    started = time.monotonic()
    try:
        response = await client.get("/readyz")
    finally:
        client.app._state[RESOURCES] = resources
        await hung.aclose()
        for writer in held:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    elapsed = time.monotonic() - started
    assert response.status == 503
    body = await response.json()
    assert body["checks"]["redis"] == "failed: TimeoutError"
    assert body["checks"]["dynamodb"] == "ok"
    assert elapsed < PROBE_TIMEOUT_S + 1.5


@pytest.fixture(name="api_with")
def _fix_api_with(tokens: TokenService) -> ApiWith:
    """The real API started from other settings (a dependency pointed somewhere dead)."""

    @asynccontextmanager
    async def start(settings: Settings) -> AsyncIterator[Client]:
        async with TestClient(TestServer(create_app(settings, tokens=tokens))) as client:
            yield client

    return start


async def test_readyz_names_postgres_when_it_is_down(settings: Settings, api_with: ApiWith) -> None:
    # Nothing listens on this port. The API starts anyway (its pool opens no connection up
    # front), so the probe, not the start-up, is what tells.
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/exporter"
    postgres = settings.postgres.model_copy(update={"dsn": SecretStr(dead)})
    async with api_with(settings.model_copy(update={"postgres": postgres})) as client:
        response = await client.get("/readyz")
        body = await response.json()
    assert response.status == 503
    assert body == {
        "status": "unavailable",
        "checks": {
            "postgres": "failed: ConnectionRefusedError",
            "redis": "ok",
            "dynamodb": "ok",
        },
    }


async def test_readyz_names_dynamodb_when_it_is_down(settings: Settings, api_with: ApiWith) -> None:
    # One attempt: the client's backoff between retries would outlast the probe's budget and
    # turn the refusal into a TimeoutError, hiding what happened.
    dynamo = settings.dynamo.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1}
    )
    async with api_with(settings.model_copy(update={"dynamo": dynamo})) as client:
        response = await client.get("/readyz")
        body = await response.json()
    assert response.status == 503
    assert body == {
        "status": "unavailable",
        "checks": {
            "postgres": "ok",
            "redis": "ok",
            "dynamodb": "failed: DynamoUnreachable",
        },
    }
