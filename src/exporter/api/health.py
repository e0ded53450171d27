"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from exporter.api import schemas
from exporter.api.openapi import docs, response_schema
from exporter.keys import RESOURCES

PROBE_TIMEOUT_S = 2.0


@docs(tags=["health"], summary="The process is alive")
@response_schema(schemas.HealthResponse, 200)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@docs(
    tags=["health"],
    summary="Dependencies are reachable",
    responses={503: {"schema": schemas.HealthResponse, "description": "A dependency failed"}},
)
@response_schema(schemas.HealthResponse, 200)
async def readyz(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    settings = resources.settings

    async def postgres() -> None:
        await resources.pg.fetchval("SELECT 1")

    async def redis() -> None:
        await resources.queue.ping()

    async def dynamodb() -> None:
        await resources.dynamo.describe_table(TableName=settings.dynamo.jobs_table)

    checks: dict[str, Callable[[], Awaitable[None]]] = {
        "postgres": postgres,
        "redis": redis,
        "dynamodb": dynamodb,
    }
    names = list(checks)
    results = await asyncio.gather(
        *(asyncio.wait_for(checks[n](), PROBE_TIMEOUT_S) for n in names), return_exceptions=True
    )
    report = {
        n: "ok" if r is None else f"failed: {type(r).__name__}"
        for n, r in zip(names, results, strict=True)
    }
    healthy = all(r is None for r in results)
    return web.json_response(
        {"status": "ok" if healthy else "unavailable", "checks": report},
        status=200 if healthy else 503,
    )
