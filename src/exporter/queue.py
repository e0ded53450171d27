"""The seam between us and arq (maintenance-only upstream): the rest of the code sees this.

arq's own names appear only here and in ``jobs/worker.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exporter.config import RedisSettings as RedisConfig
from exporter.errors import ExporterError
from exporter.models import ExportMessageV1

RUN_EXPORT = "run_export"


class QueueUnavailable(ExporterError):
    """Redis could not take the message."""


def operator_cancellations_key(queue_name: str) -> str:
    """Where ``exporter jobs cancel`` counts what it cancelled: in Redis, next to the queue,
    because the command's own process exits long before anything could scrape it. The API
    and workers read it back with the queue gauges (``metrics.queue_snapshot``)."""
    return f"{queue_name}:operator-cancellations"


class RedisNotDurable(ExporterError):
    """Redis may drop queued messages on its own (it evicts keys when memory is full)."""


# The one maxmemory-policy under which Redis refuses writes instead of dropping keys.
NOEVICTION = "noeviction"


@dataclass(frozen=True, slots=True)
class RedisDurability:
    """What Redis says about keeping our keys: from INFO, which managed services such as
    ElastiCache allow where CONFIG GET is disabled."""

    maxmemory_policy: str
    aof_enabled: bool

    @property
    def evicts(self) -> bool:
        return self.maxmemory_policy != NOEVICTION


def arq_redis_settings(config: RedisConfig) -> RedisSettings:
    settings = RedisSettings.from_dsn(config.url.get_secret_value())
    return replace(
        settings,
        conn_timeout=max(1, int(config.connect_timeout_s)),
        conn_retries=2,
        conn_retry_delay=1,
        # A Redis restart or failover drops every connection; retrying each command a few
        # times over ~3 s rides that out instead of failing the request or killing the
        # worker's poll loop (arq lets a Redis error end the worker).
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=6),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def open_arq_redis(config: RedisConfig) -> ArqRedis:
    redis = await create_pool(arq_redis_settings(config), default_queue_name=config.queue_name)
    # arq's settings have no command timeout; new connections of this pool get one (the
    # pool opened only the connection it pinged, dropped here so none lacks the bound).
    redis.connection_pool.connection_kwargs["socket_timeout"] = config.command_timeout_s
    await redis.connection_pool.disconnect()
    return redis


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A message for the export is in the queue (ready, deferred for a retry, or running),
    and whether a worker has marked it running (a marker that outlives a killed worker), for
    how long if the marker's lifetime is known."""

    queued: bool
    running: bool
    running_for_s: float | None = None


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

    async def probe(self, export_id: str, *, marker_ttl_s: float | None = None) -> QueueEntry:
        """What arq holds for this export right now.

        :param marker_ttl_s: the lifetime workers give their running marker (arq: the
            largest function timeout + 10 s); with it, ``running_for_s`` says how long ago
            a worker took the job.
        """
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zscore(self._queue_name, export_id)
                pipe.pttl(in_progress_key_prefix + export_id)
                score, ttl_ms = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"queue lookup: {type(exc).__name__}") from exc
        running = ttl_ms != -2  # -2: no marker; -1: a marker without expiry
        running_for = None
        if running and ttl_ms >= 0 and marker_ttl_s is not None:
            running_for = max(0.0, marker_ttl_s - ttl_ms / 1000)
        return QueueEntry(queued=score is not None, running=running, running_for_s=running_for)

    async def requeue_export(self, message: ExportMessageV1) -> bool:
        """Put an export on the queue again, dropping what arq still keeps from an earlier
        delivery of the same id: after a ``kill -9`` arq holds the in-progress marker until
        ``job_timeout`` + 10 s and refuses the id while the job or its result exists.

        Only for a job the caller has established is not running (the sweeper claims it in
        DynamoDB first); on a healthy run this would start a second copy.
        """
        export_id = message.export_id
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._queue_name, export_id)
                pipe.delete(
                    job_key_prefix + export_id,
                    in_progress_key_prefix + export_id,
                    result_key_prefix + export_id,
                    retry_key_prefix + export_id,
                )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"requeue failed: {type(exc).__name__}") from exc
        return await self.enqueue_export(message)

    async def withdraw(self, export_id: str) -> None:
        """Remove a message that must not run (its record is final); a no-op if absent."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._queue_name, export_id)
                pipe.delete(job_key_prefix + export_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"withdraw failed: {type(exc).__name__}") from exc

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

    async def count_operator_cancellation(self) -> int:
        """One more export cancelled by an operator; the count so far."""
        try:
            return int(await self._redis.incr(operator_cancellations_key(self._queue_name)))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"counting a cancellation: {type(exc).__name__}") from exc

    async def durability(self) -> RedisDurability:
        """How this Redis treats our keys under memory pressure and across restarts."""
        try:
            memory = await self._redis.info("memory")
            persistence = await self._redis.info("persistence")
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"redis info: {type(exc).__name__}") from exc
        return RedisDurability(
            maxmemory_policy=str(memory.get("maxmemory_policy", "unknown")),
            aof_enabled=str(persistence.get("aof_enabled", "0")) == "1",
        )

    async def ensure_durable(self) -> RedisDurability:
        """Raise ``RedisNotDurable`` unless Redis is set never to evict keys."""
        durability = await self.durability()
        if durability.evicts:
            raise RedisNotDurable(
                f"Redis evicts keys when its memory is full (maxmemory-policy "
                f"{durability.maxmemory_policy}), so queued exports could vanish; set "
                f"maxmemory-policy {NOEVICTION} (the ElastiCache parameter group in infra/, or "
                f"redis.conf), or turn this check off with EXPORTER_REDIS__REQUIRE_NOEVICTION=false"
            )
        return durability

    async def depth(self) -> int:
        try:
            return int(await self._redis.zcard(self._queue_name))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"queue depth: {type(exc).__name__}") from exc

    async def ping(self) -> Any:
        return await self._redis.ping()
