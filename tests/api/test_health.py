"""Probes: liveness says the process runs; readiness checks every dependency."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiohttp.test_utils import TestClient
from arq.connections import ArqRedis

from exporter.api.health import PROBE_TIMEOUT_S
from exporter.dev.ports import free_port
from exporter.keys import RESOURCES
from exporter.queue import ExportQueue


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
