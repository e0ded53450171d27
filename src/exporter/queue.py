"""The seam between us and arq (maintenance-only upstream): the rest of the code sees this.

arq's own names appear only here and in ``jobs/worker.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import RedisError

from exporter.config import RedisSettings as RedisConfig
from exporter.errors import ExporterError
from exporter.models import ExportMessageV1

RUN_EXPORT = "run_export"


class QueueUnavailable(ExporterError):
    """Redis could not take the message."""


def arq_redis_settings(config: RedisConfig) -> RedisSettings:
    settings = RedisSettings.from_dsn(config.url.get_secret_value())
    return replace(
        settings,
        conn_timeout=max(1, int(config.connect_timeout_s)),
        conn_retries=2,
        conn_retry_delay=1,
    )


async def open_arq_redis(config: RedisConfig) -> ArqRedis:
    return await create_pool(arq_redis_settings(config), default_queue_name=config.queue_name)


class ExportQueue:
    """Puts export messages on the queue; the arq job id is the export id."""

    def __init__(self, redis: ArqRedis, *, queue_name: str) -> None:
        self._redis = redis
        self._queue_name = queue_name

    @property
    def redis(self) -> ArqRedis:
        return self._redis

    async def enqueue_export(self, message: ExportMessageV1) -> bool:
        """Enqueue; False when a job with this id is already queued, running or kept."""
        try:
            job = await self._redis.enqueue_job(
                RUN_EXPORT,
                message.to_payload(),
                _job_id=message.export_id,
                _queue_name=self._queue_name,
            )
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"enqueue failed: {type(exc).__name__}") from exc
        return job is not None

    async def depth(self) -> int:
        try:
            return int(await self._redis.zcard(self._queue_name))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"queue depth: {type(exc).__name__}") from exc

    async def ping(self) -> Any:
        return await self._redis.ping()
