"""GET /metrics: this API process's Prometheus metrics, plus the queue read at scrape time."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from exporter.keys import RESOURCES
from exporter.metrics import refresh_queue_metrics, render_latest

log = structlog.stdlib.get_logger("exporter.api.metrics")

# A scrape must answer even when Redis does not: the queue gauges then keep their last value.
QUEUE_READ_TIMEOUT_S = 2.0


async def serve_metrics(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    try:
        await asyncio.wait_for(
            refresh_queue_metrics(resources.queue.redis, resources.settings.redis.queue_name),
            QUEUE_READ_TIMEOUT_S,
        )
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("metrics.queue_read_failed", error=type(exc).__name__)
    body, content_type = render_latest()
    response = web.Response(body=body)
    # prometheus-client's content type carries parameters aiohttp will not take as a kwarg.
    response.headers["Content-Type"] = content_type
    return response
