"""A worker's own Prometheus endpoint: this process's metrics on a port (a thread), with the
queue gauges kept fresh from Redis (a task). Off unless ``worker.metrics_port`` is set."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from prometheus_client import start_http_server
from redis.exceptions import RedisError

from exporter.metrics import refresh_queue_metrics
from exporter.queue import QueueRedis

log = structlog.stdlib.get_logger("exporter.metrics")

# How often a worker re-reads the queue for its gauges: finer than a typical 15-30 s scrape.
QUEUE_REFRESH_S = 5.0


async def _refresh_queue_forever(redis: QueueRedis, queue: str, interval_s: float) -> None:
    while True:
        try:
            await asyncio.wait_for(refresh_queue_metrics(redis, queue), interval_s)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("metrics.queue_read_failed", error=type(exc).__name__)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def serve_worker_metrics(
    redis: QueueRedis,
    queue: str,
    *,
    host: str,
    port: int,
    refresh_s: float = QUEUE_REFRESH_S,
) -> AsyncIterator[int]:
    """Serve this process's metrics on ``host:port`` (a thread) and keep the queue gauges
    fresh (a task) until the block ends. Yields the bound port (``port=0`` picks one)."""
    server, thread = start_http_server(port, addr=host)
    refresher = asyncio.create_task(_refresh_queue_forever(redis, queue, refresh_s))
    bound = int(server.server_address[1])
    log.info("metrics.serving", host=host, port=bound)
    try:
        yield bound
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await asyncio.to_thread(server.shutdown)  # waits out serve_forever's poll
        server.server_close()
        thread.join(timeout=5)
