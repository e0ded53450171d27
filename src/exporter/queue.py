"""The seam between us and arq (maintenance-only upstream): the rest of the code sees this.

Everything known about arq's Redis keys lives here: enqueue, requeue, abort and withdraw a
message, probe one export, snapshot the whole queue for the gauges and ``exporter queue
stats``, the workers' health keys and their per-process liveness keys. arq's own names
appear only here and in ``jobs/worker.py`` (the only arq adapter: the worker settings and
task functions).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime
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
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exporter.config import RedisSettings as RedisConfig
from exporter.errors import QueueUnavailable, RedisNotDurable
from exporter.eta import RunSample, WaitEstimate, estimate_wait
from exporter.models import ExportMessageV1

RUN_EXPORT = "run_export"


def operator_cancellations_key(queue_name: str) -> str:
    """Where ``exporter jobs cancel`` counts what it cancelled: in Redis, next to the queue,
    because the command's own process exits long before anything could scrape it. The API
    and workers read it back with the queue gauges (``metrics.queue_snapshot``)."""
    return f"{queue_name}:operator-cancellations"


def wake_key(queue_name: str) -> str:
    """The list an enqueue pushes a token on and an idle worker of that queue blocks on
    between polls (``WakeSignal``), so it starts the job at once instead of at its next
    poll."""
    return f"{queue_name}:wake"


# Tokens nobody took (every worker busy, or none running) are kept at most this many, for
# at most this long: each wakes one wait, and a poll finds the jobs anyway.
WAKE_BACKLOG = 64
WAKE_TTL_S = 60


class WakeSignal:
    """An idle worker's wait between polls: BLPOP on its queue's wake-up list, on a
    connection of its own (a blocking command holds it), returning at the first enqueue or
    after ``timeout_s``. Redis trouble turns it back into a plain sleep: the poll goes on."""

    def __init__(self, config: RedisConfig, queue_name: str, *, max_wait_s: float) -> None:
        self._key = wake_key(queue_name)
        self._redis: Redis = Redis.from_url(
            config.url.get_secret_value(),
            socket_connect_timeout=config.connect_timeout_s,
            # Longer than any wait: a BLPOP is not a hung command until its timeout passed.
            socket_timeout=max_wait_s + config.command_timeout_s,
        )

    async def wait(self, timeout_s: float) -> bool:
        """True when an enqueue woke it, False after ``timeout_s`` (or a Redis error)."""
        if timeout_s <= 0:
            return False
        try:
            # A fractional timeout (Redis >= 6): redis-py's blpop() types it as whole
            # seconds, and execute_command is untyped.
            command = self._redis.execute_command
            got = await command("BLPOP", self._key, f"{timeout_s:.3f}")  # type: ignore[no-untyped-call]
            return got is not None
        except (RedisError, OSError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The worker is being stopped: redis-py turned the cancel of the blocking
                # read into a connection error; swallowing it would keep the worker polling.
                raise asyncio.CancelledError from None
            await asyncio.sleep(timeout_s)
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()


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


# Successful runs per queue the ETA is measured from: enough to smooth one odd run, few
# enough that a change in the queue's mix (or a slower database) shows within minutes.
RUN_SAMPLES = 50


def _parse_run(raw: bytes) -> RunSample | None:
    try:
        rows, seconds = raw.decode().split()
        return RunSample(rows=int(rows), duration_s=float(seconds))
    except ValueError:
        return None


def _slots_of(member: bytes) -> int:
    _, _, slots = member.decode().rpartition("|")
    return int(slots) if slots.isdigit() else 0


# Entries at the head of a queue checked for running markers by ``place`` (at least; twice
# the live slots when more): runs in progress are the oldest entries in the set.
RUNNING_SCAN_MIN = 100

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


@dataclass(frozen=True, slots=True)
class QueuePlace:
    """Where a waiting export stands in its queue, and when it may start and finish
    (``exporter.eta``; None while nothing is measured)."""

    position: int  # 1-based among the ready jobs of its queue
    running_ahead: int  # runs in progress that were queued before it
    estimate: WaitEstimate


async def waiting_elsewhere(
    redis: ArqRedis, *, other_queue: str, queue: str, job_ids: list[str], look: int = 64
) -> tuple[bool, float | None]:
    """Whether ``other_queue`` has a job waiting to start (ready and not running: arq keeps a
    running job in its queue until it ends), among its first ``look``; and how long the first
    of ``job_ids`` that is not running has been ready on ``queue`` (seconds; None if every
    one is running or gone). Two round trips."""
    now = timestamp_ms()
    others = await redis.zrangebyscore(other_queue, min=float("-inf"), max=now, start=0, num=look)
    async with redis.pipeline(transaction=False) as pipe:
        for other in others:
            pipe.exists(in_progress_key_prefix + other.decode())
        for job_id in job_ids:
            pipe.exists(in_progress_key_prefix + job_id)
            pipe.zscore(queue, job_id)
        answers = await pipe.execute()
    waiting = not all(answers[: len(others)])
    ours = answers[len(others) :]
    for running, score in zip(ours[::2], ours[1::2], strict=True):
        if not running and score is not None:
            return waiting, max(0.0, (now - float(score)) / 1000)
    return waiting, None


def runs_key(queue_name: str) -> str:
    """Recent successful runs on ``queue_name`` (rows and seconds), newest first: what the
    ETA of a waiting export is measured from."""
    return f"{queue_name}:runs"


def pool_key(queue_name: str) -> str:
    """The worker processes serving ``queue_name``, scored by when their entry lapses, each
    with its number of slots (``max_jobs``) in the member."""
    return f"{queue_name}:pool"


class ExportQueue:
    """Puts export messages on the queue; the arq job id is the export id.

    Two queues (``large_queue_name``, size-aware routing): each message goes to the one its
    export was routed to (``large``); probe, abort and withdraw look in both, so they need
    not know. Without a large queue both names are the default one.
    """

    def __init__(
        self, redis: ArqRedis, *, queue_name: str, large_queue_name: str | None = None
    ) -> None:
        self._redis = redis
        self._queue_name = queue_name
        self._large_queue_name = large_queue_name or queue_name
        self._queues = tuple(dict.fromkeys((queue_name, self._large_queue_name)))

    @property
    def redis(self) -> ArqRedis:
        return self._redis

    def queue_for(self, *, large: bool) -> str:
        """The arq queue (sorted set) of an export routed as ``large`` or not."""
        return self._large_queue_name if large else self._queue_name

    @property
    def queue_names(self) -> tuple[str, ...]:
        """Every queue messages may be on (one, or the default and the large one)."""
        return self._queues

    async def enqueue_export(
        self, message: ExportMessageV1, *, large: bool = False, defer_s: float | None = None
    ) -> bool:
        """Enqueue on the default or the large queue (to run ``defer_s`` seconds from now,
        if given); False when a job with this id is already queued, running or kept (arq's
        job keys do not depend on the queue)."""
        try:
            job = await self._redis.enqueue_job(
                RUN_EXPORT,
                message.to_payload(),
                _job_id=message.export_id,
                _queue_name=self.queue_for(large=large),
                _defer_by=defer_s,
            )
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"enqueue failed: {type(exc).__name__}") from exc
        if job is not None and not defer_s:
            await self._wake(self.queue_for(large=large))
        return job is not None

    async def _wake(self, queue_name: str) -> None:
        """Wake one idle worker of ``queue_name`` (``WakeSignal``); best effort: without it
        the job starts at the next poll."""
        key = wake_key(queue_name)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(key, b"1")
                pipe.ltrim(key, -WAKE_BACKLOG, -1)
                pipe.expire(key, WAKE_TTL_S)
                await pipe.execute()
        except (RedisError, OSError):
            pass

    async def probe(self, export_id: str, *, marker_ttl_s: float | None = None) -> QueueEntry:
        """What arq holds for this export right now, on either queue.

        :param marker_ttl_s: the lifetime workers give their running marker (arq: the
            largest function timeout + 10 s); with it, ``running_for_s`` says how long ago
            a worker took the job.
        """
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for queue in self._queues:
                    pipe.zscore(queue, export_id)
                pipe.pttl(in_progress_key_prefix + export_id)
                *scores, ttl_ms = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"queue lookup: {type(exc).__name__}") from exc
        running = ttl_ms != -2  # -2: no marker; -1: a marker without expiry
        running_for = None
        if running and ttl_ms >= 0 and marker_ttl_s is not None:
            running_for = max(0.0, marker_ttl_s - ttl_ms / 1000)
        queued = any(score is not None for score in scores)
        return QueueEntry(queued=queued, running=running, running_for_s=running_for)

    async def requeue_export(
        self, message: ExportMessageV1, *, large: bool = False, defer_s: float | None = None
    ) -> bool:
        """Put an export on the queue again (the default or the large one; to run
        ``defer_s`` seconds from now, if given), dropping what arq still keeps from an
        earlier delivery of the same id: after a ``kill -9`` arq holds the in-progress
        marker until ``job_timeout`` + 10 s and refuses the id while the job or its result
        exists.

        Only for a job the caller has established is not running (the sweeper claims it in
        DynamoDB first); on a healthy run this would start a second copy.
        """
        export_id = message.export_id
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for queue in self._queues:
                    pipe.zrem(queue, export_id)
                pipe.delete(
                    job_key_prefix + export_id,
                    in_progress_key_prefix + export_id,
                    result_key_prefix + export_id,
                    retry_key_prefix + export_id,
                )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"requeue failed: {type(exc).__name__}") from exc
        return await self.enqueue_export(message, large=large, defer_s=defer_s)

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
                for queue in self._queues:
                    pipe.zrem(queue, export_id)
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
                for queue in self._queues:  # xx: only the queue that holds it
                    tr.zadd(queue, {export_id: 1}, xx=True)
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

    async def depth(self, *, large: bool = False) -> int:
        try:
            return int(await self._redis.zcard(self.queue_for(large=large)))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"queue depth: {type(exc).__name__}") from exc

    # --- where a waiting export stands, and the measurements its ETA comes from -----------

    async def record_run(self, *, large: bool, rows: int, duration_s: float) -> None:
        """A run on this queue succeeded: keep it among the last ``RUN_SAMPLES``."""
        key = runs_key(self.queue_for(large=large))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, f"{rows} {duration_s:.4f}")
                pipe.ltrim(key, 0, RUN_SAMPLES - 1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"recording a run: {type(exc).__name__}") from exc

    async def join_pool(
        self, worker_id: str, *, large: bool, slots: int, ttl_s: float, now_ms: int | None = None
    ) -> None:
        """Count this worker process's ``slots`` in its queue's pool for ``ttl_s`` (renewed
        with its liveness key; a dead process drops out when its entry lapses)."""
        now_ms = timestamp_ms() if now_ms is None else now_ms
        key = pool_key(self.queue_for(large=large))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {f"{worker_id}|{slots}": now_ms + int(ttl_s * 1000)})
                pipe.zremrangebyscore(key, "-inf", now_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"worker pool: {type(exc).__name__}") from exc

    async def leave_pool(self, worker_id: str, *, large: bool, slots: int) -> None:
        try:
            await self._redis.zrem(pool_key(self.queue_for(large=large)), f"{worker_id}|{slots}")
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"worker pool: {type(exc).__name__}") from exc

    async def place(
        self,
        export_id: str,
        *,
        large: bool,
        estimated_rows: int | None,
        now_ms: int | None = None,
    ) -> QueuePlace | None:
        """Where this export waits in its queue (None: not waiting there: running, gone,
        or on the other queue) and when it may start and finish (``exporter.eta``).

        Its position is its ZRANK (arq takes due jobs in that order) less the runs still
        in the set ahead of it. Those are the oldest entries, so only the head of the
        queue is checked for running markers (a few times the slots serving it): the
        cost of a look stays bounded however long the backlog, on the morning everyone
        is looking.
        """
        now_ms = timestamp_ms() if now_ms is None else now_ms
        queue = self.queue_for(large=large)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrank(queue, export_id)
                pipe.exists(in_progress_key_prefix + export_id)
                pipe.lrange(runs_key(queue), 0, RUN_SAMPLES - 1)
                pipe.zrangebyscore(pool_key(queue), now_ms, "+inf")
                rank, running, raw_runs, pool = await pipe.execute()
            if rank is None or running:
                return None
            slots = sum(_slots_of(member) for member in pool)
            head: list[bytes] = []
            if rank:
                head = await self._redis.zrange(
                    queue, 0, min(rank, max(RUNNING_SCAN_MIN, 2 * slots)) - 1
                )
            marks: list[int] = []
            if head:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in head:
                        pipe.exists(in_progress_key_prefix + job_id.decode())
                    marks = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"queue position: {type(exc).__name__}") from exc
        running_ahead = sum(1 for m in marks if m)
        position = int(rank) - running_ahead + 1
        estimate = estimate_wait(
            position=position,
            running_ahead=running_ahead,
            slots=slots,
            runs=[run for run in (_parse_run(raw) for raw in raw_runs) if run is not None],
            estimated_rows=estimated_rows,
            now=datetime.fromtimestamp(now_ms / 1000, UTC),
        )
        return QueuePlace(position=position, running_ahead=running_ahead, estimate=estimate)

    async def ping(self) -> Any:
        return await self._redis.ping()
