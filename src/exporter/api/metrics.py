"""Metrics of the API: the middleware that counts and times every request, and GET /metrics
(this process's Prometheus metrics, plus the queue read at scrape time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from exporter.keys import RESOURCES
from exporter.metrics import observe_http_request, refresh_queue_metrics, render_latest

log = structlog.stdlib.get_logger("exporter.api.metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A scrape must answer even when Redis does not: the queue gauges then keep their last value.
QUEUE_READ_TIMEOUT_S = 2.0


async def serve_metrics(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    try:
        async with asyncio.timeout(QUEUE_READ_TIMEOUT_S):
            for queue in resources.queue.queue_names:  # one series per queue (label)
                await refresh_queue_metrics(resources.queue.redis, queue)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("metrics.queue_read_failed", error=type(exc).__name__)
    body, content_type = render_latest()
    response = web.Response(body=body)
    # prometheus-client's content type carries parameters aiohttp will not take as a kwarg.
    response.headers["Content-Type"] = content_type
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by method, route template and final status."""
    started = time.perf_counter()
    status = 500  # an exception that escapes every other middleware becomes a 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        observe_http_request(request.method, route, status, time.perf_counter() - started)
