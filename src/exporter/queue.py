"""The seam between us and arq (maintenance-only upstream): the rest of the code sees this.

Everything known about arq's Redis keys lives here: enqueue, requeue, abort and withdraw a
message, probe one export, snapshot the whole queue for the gauges and ``exporter queue
stats``, the workers' health keys and their per-process liveness keys. arq's own names
appear only here and in ``jobs/worker.py`` (the only arq adapter: the worker settings and
task functions).
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
from exporter.errors import QueueUnavailable, RedisNotDurable
from exporter.models import ExportMessageV1

RUN_EXPORT = "run_export"


def operator_cancellations_key(queue_name: str) -> str:
    """Where ``exporter jobs cancel`` counts what it cancelled: in Redis, next to the queue,
    because the command's own process exits long before anything could scrape it. The API
    and workers read it back with the queue gauges (``metrics.queue_snapshot``)."""
    return f"{queue_name}:operator-cancellations"


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


# Bound on the work a snapshot does: jobs due now that are inspected one by one. Past this
# the counts are lower bounds (a backlog that large needs no finer number to act on).
QUEUE_SCAN_LIMIT = 10_000

# The client of our queue, for the few that pass it around (metrics, tests).
QueueRedis = ArqRedis


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What is in an arq queue right now."""

    queue: str
    jobs: int  # everything in the sorted set
    ready: int  # due, not started
    in_progress: int  # started by a worker, not finished
    deferred: int  # due later (retries in backoff, deferred enqueues)
    oldest_ready_age_s: float  # 0.0 when nothing is ready
    operator_cancellations: int = 0  # `exporter jobs cancel` so far (since Redis last lost it)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "jobs": self.jobs,
            "ready": self.ready,
            "in_progress": self.in_progress,
            "deferred": self.deferred,
            "oldest_ready_age_s": round(self.oldest_ready_age_s, 3),
            "operator_cancellations": self.operator_cancellations,
        }


async def queue_snapshot(
    redis: ArqRedis, queue: str, *, now_ms: int | None = None, limit: int = QUEUE_SCAN_LIMIT
) -> QueueSnapshot:
    """Read an arq queue: a sorted set of job ids scored by when each may run (ms).

    arq leaves a job in the set while it runs (it removes it when the job finishes) and marks
    it running with an ``arq:in-progress:<id>`` key, so "ready" is "due and not marked".
    """
    # arq scores with round(time * 1000); truncating here would see a job enqueued this
    # very millisecond as not yet due.
    now_ms = timestamp_ms() if now_ms is None else now_ms
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(queue)
        pipe.get(operator_cancellations_key(queue))
        total, cancelled = await pipe.execute()
    due: list[tuple[bytes, float]] = await redis.zrangebyscore(
        queue, "-inf", now_ms, start=0, num=limit, withscores=True
    )
    running: list[int] = []
    if due:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id, _ in due:
                pipe.exists(in_progress_key_prefix + job_id.decode())
            running = await pipe.execute()
    in_progress = sum(1 for r in running if r)
    ready_scores = [score for (_, score), r in zip(due, running, strict=True) if not r]
    oldest = max(0.0, (now_ms - min(ready_scores)) / 1000) if ready_scores else 0.0
    due_total = int(await redis.zcount(queue, "-inf", now_ms)) if len(due) >= limit else len(due)
    ready = len(ready_scores) + max(0, due_total - len(due))
    return QueueSnapshot(
        queue=queue,
        jobs=int(total),
        ready=ready,
        in_progress=in_progress,
        deferred=max(0, int(total) - due_total),
        oldest_ready_age_s=oldest,
        operator_cancellations=int(cancelled or 0),
    )


async def workers_alive(redis: ArqRedis, queue: str) -> dict[str, str]:
    """Health keys of live workers on ``queue`` (one per process; they expire when it stops)."""
    found: dict[str, str] = {}
    prefix = health_check_prefix(queue)
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode()
        value = await redis.get(name)
        if value is not None:
            found[name[len(prefix) :]] = value.decode()
    return found


def health_check_prefix(queue: str) -> str:
    """arq's health-check key is ``{queue}:health-check``; ours add ``:{host}`` to it, one per
    worker process (``jobs/worker.py``)."""
    return f"{queue}:health-check:"


def worker_liveness_key(queue: str, worker_id: str) -> str:
    """One key per worker *process* (``worker_id``), unlike arq's health key, which is one
    per host and refreshed every 30 s: this one lives seconds, so its absence says the
    process is gone (``kill -9``, OOM, a lost node) soon after it went."""
    return f"{queue}:worker-alive:{worker_id}"


async def job_state(redis: ArqRedis, queue: str, job_id: str) -> dict[str, Any]:
    """What arq holds for one job id: queued (and since when), running, retry count, result."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(queue, job_id)
        pipe.exists(in_progress_key_prefix + job_id)
        pipe.get(retry_key_prefix + job_id)
        pipe.exists(result_key_prefix + job_id)
        score, running, tries, result = await pipe.execute()
    return {
        "queued": score is not None,
        "queued_since_ms": int(score) if score is not None else None,
        "running": bool(running),
        "tries": int(tries) if tries is not None else 0,
        "result_kept": bool(result),
    }


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

    async def enqueue_export(
        self, message: ExportMessageV1, *, defer_s: float | None = None
    ) -> bool:
        """Enqueue (to run ``defer_s`` seconds from now, if given); False when a job with
        this id is already queued, running or kept."""
        try:
            job = await self._redis.enqueue_job(
                RUN_EXPORT,
                message.to_payload(),
                _job_id=message.export_id,
                _queue_name=self._queue_name,
                _defer_by=defer_s,
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

    async def requeue_export(
        self, message: ExportMessageV1, *, defer_s: float | None = None
    ) -> bool:
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
        return await self.enqueue_export(message, defer_s=defer_s)

    async def mark_worker_alive(self, worker_id: str, *, ttl_s: float) -> None:
        """Say that the worker process ``worker_id`` lives, for the next ``ttl_s`` seconds."""
        try:
            await self._redis.set(
                worker_liveness_key(self._queue_name, worker_id),
                b"1",
                px=max(1, int(ttl_s * 1000)),
            )
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"worker liveness: {type(exc).__name__}") from exc

    async def worker_alive(self, worker_id: str) -> bool:
        """True while the worker process ``worker_id`` keeps its liveness key fresh."""
        try:
            return bool(await self._redis.exists(worker_liveness_key(self._queue_name, worker_id)))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"worker liveness: {type(exc).__name__}") from exc

    async def forget_worker(self, worker_id: str) -> None:
        """A worker process stops (after its jobs ended): its liveness key goes with it."""
        try:
            await self._redis.delete(worker_liveness_key(self._queue_name, worker_id))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"worker liveness: {type(exc).__name__}") from exc

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

    async def forget_result(self, export_id: str) -> None:
        """Drop the result arq keeps of a finished run, which makes it refuse the id (an
        operator's retry of a failed export enqueues the same id again)."""
        try:
            await self._redis.delete(result_key_prefix + export_id)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"forget result: {type(exc).__name__}") from exc

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
