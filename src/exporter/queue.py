"""The seam between us and arq (maintenance-only upstream): the rest of the code sees this.

arq's own names appear only here and in ``jobs/worker.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.utils import timestamp_ms
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

    async def abort_export(self, export_id: str) -> bool:
        """Ask arq to stop this export's job; False when arq holds no job for it.

        arq's ``Job.abort()`` without its wait for the result (an HTTP request should not
        block on a worker's poll): a running job is cancelled at the next poll of the worker
        running it (``allow_abort_jobs``), a queued or deferred one is dropped when a worker
        takes it, which the jump to the front of the queue makes soon.
        """
        try:
            if not await self._redis.exists(job_key_prefix + export_id):
                # Finished (or never queued): an abort entry would only linger in Redis.
                return False
            async with self._redis.pipeline(transaction=True) as tr:
                tr.zadd(self._queue_name, {export_id: 1}, xx=True)
                tr.zadd(abort_jobs_ss, {export_id: timestamp_ms()})
                await tr.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"abort failed: {type(exc).__name__}") from exc
        return True

    async def depth(self) -> int:
        try:
            return int(await self._redis.zcard(self._queue_name))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"queue depth: {type(exc).__name__}") from exc

    async def ping(self) -> Any:
        return await self._redis.ping()
