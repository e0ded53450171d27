"""arq worker settings: the one place that knows arq's worker API.

``build_worker_settings(settings)`` returns the keyword arguments for ``arq.Worker``; the
clients are opened in ``on_startup`` and closed in ``on_shutdown``, so nothing connects at
import time and tests can build a worker with their own settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from contextlib import AsyncExitStack
from typing import Any

import structlog
from arq import Retry, cron
from arq.worker import Function, Worker, func
from redis.exceptions import RedisError

from exporter.config import EXPIRE_TIMEOUT_S, Settings
from exporter.errors import QueueUnavailable, RetryLater
from exporter.jobs.expire import expire_jobs
from exporter.jobs.metrics_server import serve_worker_metrics
from exporter.jobs.ownership import may_schedule_here
from exporter.jobs.run import run_export
from exporter.jobs.sweep import sweep_jobs
from exporter.logs import configure_logging
from exporter.metrics import observe_export_retry
from exporter.models import JobState, clean_request_id
from exporter.queue import (
    RUN_EXPORT,
    ExportQueue,
    WakeSignal,
    arq_redis_settings,
    open_arq_redis,
    waiting_elsewhere,
)
from exporter.resources import Resources, open_resources
from exporter.schedules.run import run_due_schedules

log = structlog.stdlib.get_logger("exporter.jobs.worker")

_RESOURCES = "resources"
_EXIT_STACK = "exit_stack"
_SETTINGS = "settings"
_WORKER_ID = "worker_id"
_LARGE = "large"
_SLOTS = "slots"
# Resources the process opened for several pools (jobs/pools.py): used, not opened or closed.
_SHARED = "shared_resources"
_SERVE_METRICS = "serve_metrics"


def is_large_pool(ctx: dict[str, Any]) -> bool:
    """Whether this worker serves the large exports' queue (``exporter worker --queue large``)."""
    return bool(ctx.get(_LARGE, False))


def resources_of(ctx: dict[str, Any]) -> Resources:
    resources = ctx[_RESOURCES]
    assert isinstance(resources, Resources)
    return resources


async def on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx[_SETTINGS]
    arq_pool = ctx.get("redis")
    if arq_pool is not None:
        # arq opens its own pool without a command timeout: give its connections one, as
        # open_arq_redis does, so a hung Redis fails the poll instead of freezing it.
        arq_pool.connection_pool.connection_kwargs["socket_timeout"] = (
            settings.redis.command_timeout_s
        )
        await arq_pool.connection_pool.disconnect()
    stack = AsyncExitStack()
    shared: Resources | None = ctx.get(_SHARED)
    if shared is None:
        resources = await stack.enter_async_context(open_resources(settings))
    else:
        resources = shared
    if settings.redis.require_noeviction:
        try:
            await _check_redis_durability(resources)
        except BaseException:
            await stack.aclose()
            raise
    try:
        ctx[_WORKER_ID] = await _keep_alive(
            stack,
            resources.queue,
            settings,
            large=is_large_pool(ctx),
            slots=int(ctx.get(_SLOTS, settings.worker.max_jobs)),
        )
    except BaseException:
        await stack.aclose()
        raise
    ctx[_RESOURCES] = resources
    ctx[_EXIT_STACK] = stack
    if settings.worker.metrics_port and ctx.get(_SERVE_METRICS, True):
        await stack.enter_async_context(
            serve_worker_metrics(
                resources.queue.redis,
                resources.queue.queue_for(large=is_large_pool(ctx)),
                host=settings.worker.metrics_host,
                port=settings.worker.metrics_port,
            )
        )
    # Clients open, checks passed: from here on this process takes jobs.
    log.info(
        "worker.ready",
        queue=resources.queue.queue_for(large=is_large_pool(ctx)),
        max_jobs=ctx.get(_SLOTS, settings.worker.max_jobs),
        worker_id=ctx[_WORKER_ID],
    )


def new_worker_id() -> str:
    """An id for this worker process, unique across restarts: host (the pod), pid, random."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


async def _keep_alive(
    stack: AsyncExitStack, queue: ExportQueue, settings: Settings, *, large: bool, slots: int
) -> str:
    """Write this process's liveness key now and every ``liveness_refresh_s`` until the
    worker shuts down (its jobs have ended by then: arq calls ``on_shutdown`` after them),
    then delete it. Every job this process runs records the id (``worker_id``). The same
    refresh counts its slots in its queue's pool (what a waiting export's ETA divides by).

    Liveness keys live under the default queue's name whichever pool a worker serves, so
    the sweeper (which runs on the default pool) finds a large worker's key too."""
    worker_id = new_worker_id()
    ttl_s, every_s = settings.worker.liveness_ttl_s, settings.worker.liveness_refresh_s

    async def mark() -> None:
        await queue.mark_worker_alive(worker_id, ttl_s=ttl_s)
        await queue.join_pool(worker_id, large=large, slots=slots, ttl_s=ttl_s)

    await mark()

    async def refresh() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await mark()
            except QueueUnavailable as exc:
                # The next refresh retries; a key that lapses meanwhile costs at worst a
                # re-run of a job whose heartbeat also went quiet (the sweeper asks both).
                log.warning("worker.liveness_not_recorded", error=str(exc))

    task = asyncio.create_task(refresh(), name="worker-liveness")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await queue.forget_worker(worker_id)
            await queue.leave_pool(worker_id, large=large, slots=slots)
        except QueueUnavailable as exc:
            log.warning("worker.liveness_not_removed", error=str(exc))  # it expires anyway

    stack.push_async_callback(stop)
    return worker_id


async def _check_redis_durability(resources: Resources) -> None:
    """Refuse to run on a Redis that evicts keys (a queued export would vanish with no
    error anywhere); only warn without AOF, which ElastiCache does not offer on Redis 7
    (Multi-AZ replication and the sweeper cover a restart there)."""
    durability = await resources.queue.ensure_durable()
    if not durability.aof_enabled:
        log.warning(
            "worker.redis_without_aof",
            maxmemory_policy=durability.maxmemory_policy,
            hint="a Redis restart loses the queue; the sweeper re-enqueues from DynamoDB",
        )


async def on_shutdown(ctx: dict[str, Any]) -> None:
    stack: AsyncExitStack | None = ctx.pop(_EXIT_STACK, None)
    if stack is not None:
        await stack.aclose()


async def on_job_start(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"), job_try=ctx.get("job_try"))


async def run_export_task(ctx: dict[str, Any], payload: object) -> dict[str, Any] | None:
    settings: Settings = ctx[_SETTINGS]
    # The API request that asked for this export: its id on every line this job logs.
    request_id = clean_request_id(payload.get("request_id") if isinstance(payload, dict) else None)
    if request_id is not None:
        structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.monotonic()
    try:
        outcome = await run_export(
            resources_of(ctx),
            payload,
            attempt=int(ctx.get("job_try", 1)),
            max_attempts=settings.worker.max_tries,
            worker_id=ctx.get(_WORKER_ID),
        )
    except RetryLater as exc:
        observe_export_retry(_retry_reason(exc))
        raise Retry(defer=exc.delay_s) from exc
    if outcome is None:
        return None
    if outcome.status is JobState.SUCCEEDED and outcome.row_count is not None:
        await _measure(ctx, rows=outcome.row_count, duration_s=time.monotonic() - started)
    return {"status": outcome.status.value, "rows": outcome.row_count, "bytes": outcome.byte_size}


async def _measure(ctx: dict[str, Any], *, rows: int, duration_s: float) -> None:
    """Keep this run among its queue's recent ones, for the ETA of the exports waiting."""
    try:
        await resources_of(ctx).queue.record_run(
            large=is_large_pool(ctx), rows=rows, duration_s=duration_s
        )
    except QueueUnavailable as exc:
        log.warning("worker.run_not_measured", error=str(exc))  # one sample fewer


def _retry_reason(exc: RetryLater) -> str:
    """The short code of what made the export retry (its cause), for the retries metric."""
    cause = exc.__cause__
    code = getattr(cause, "code", None)
    return code if isinstance(code, str) else type(cause).__name__ if cause else "unknown"


async def expire_jobs_task(ctx: dict[str, Any]) -> dict[str, int]:
    report = await expire_jobs(resources_of(ctx))
    return {"files_deleted": report.files_deleted, "records_deleted": report.records_deleted}


async def sweep_jobs_task(ctx: dict[str, Any]) -> dict[str, int]:
    return (await sweep_jobs(resources_of(ctx))).as_dict()


async def run_schedules_task(ctx: dict[str, Any]) -> dict[str, int]:
    """The monthly schedules' tick: claim and run what is due (``schedules/run.py``); no
    claims while this region is declared failed (``jobs/ownership.py``)."""
    resources = resources_of(ctx)
    if not await may_schedule_here(resources):
        log.info("schedules.fenced", region=resources.settings.region)
        return {"fenced": 1}
    return (await run_due_schedules(resources)).as_dict()


def sweep_schedule(every_s: int) -> dict[str, Any]:
    """arq cron fields for "every ``every_s`` seconds" (a divisor of 60, or whole minutes)."""
    if every_s < 60:
        return {"second": set(range(0, 60, every_s))}
    return {"minute": set(range(0, 60, every_s // 60)), "second": {0}}


# More tries than the retry budget can use up (1800 s at >= 1 s each, with room to spare).
ARQ_MAX_TRIES = 100_000


def health_check_key(settings: Settings, *, large: bool = False) -> str:
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    queue = settings.redis.large_queue if large else settings.redis.queue_name
    return f"{queue}:health-check:{host}"


def build_worker_settings(
    settings: Settings,
    *,
    large: bool = False,
    max_jobs: int | None = None,
    shared: Resources | None = None,
    serve_metrics: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``arq.Worker``; ``overrides`` win (tests use burst mode).

    ``max_jobs``: this pool's slots (``worker.max_jobs`` by default). ``shared``: clients
    the process opened for all its pools, which this worker uses and leaves open;
    ``serve_metrics``: whether this worker serves the process's metrics port (one per
    process). Both for jobs/pools.py, where one process runs both pools.

    ``large``: serve the large exports' queue (``redis.large_queue``). Only the default
    pool runs the crons: arq's unique cron job ids (``cron:<name>:<ms>``) are global, so
    both pools would still run a tick once, but a large pool whose slots are all streaming
    would start a sweep late; the default pool's slots turn over in seconds."""
    worker = settings.worker
    slots = worker.max_jobs if max_jobs is None else max_jobs
    ctx: dict[str, Any] = {_SETTINGS: settings, _LARGE: large, _SLOTS: slots}
    ctx[_SERVE_METRICS] = serve_metrics
    if shared is not None:
        ctx[_SHARED] = shared
    functions: list[Function] = [
        func(
            run_export_task,
            name=RUN_EXPORT,
            # Our own policy bounds the retries (jobs/run.py: the retry budget), not arq's
            # count of tries: an outage of half an hour may take dozens.
            max_tries=ARQ_MAX_TRIES,
            timeout=worker.job_timeout_s,
        )
    ]
    return {
        "functions": functions,
        "cron_jobs": []
        if large
        else [
            cron(
                expire_jobs_task,
                name="expire_jobs",
                minute={worker.expire_cron_minute},
                unique=True,
                run_at_startup=False,
                timeout=EXPIRE_TIMEOUT_S,
            ),
            cron(
                sweep_jobs_task,
                name="sweep_jobs",
                unique=True,
                run_at_startup=False,
                timeout=worker.sweep_timeout_s,
                **sweep_schedule(worker.sweep_every_s),
            ),
            *(
                [
                    cron(
                        run_schedules_task,
                        # arq's unique cron ids (cron:<name>:<ms>) are global: the name is the key.
                        name="run_export_schedules",
                        unique=True,
                        run_at_startup=False,
                        # A tick must not outlive the next one (claims are safe to overlap anyway).
                        timeout=max(10, min(settings.schedules.tick_every_s, 300)),
                        **sweep_schedule(settings.schedules.tick_every_s),
                    )
                ]
                if settings.schedules.scheduler_enabled
                else []
            ),
        ],
        "queue_name": settings.redis.large_queue if large else settings.redis.queue_name,
        "redis_settings": arq_redis_settings(settings.redis),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "on_job_start": on_job_start,
        "ctx": ctx,
        "max_jobs": slots,
        "job_timeout": worker.job_timeout_s,
        "max_tries": worker.max_tries,
        "poll_delay": worker.poll_delay_s,
        "job_completion_wait": worker.shutdown_grace_s,
        # DELETE /v1/exports/{id} and `exporter jobs cancel` stop a running export.
        "allow_abort_jobs": True,
        # Our own records hold the outcome; arq's copy only needs to outlive retries.
        "keep_result": 600,
        "health_check_interval": 30,
        # One key per worker process, so a liveness probe sees *this* pod hang even while
        # other workers on the queue are healthy.
        "health_check_key": health_check_key(settings, large=large),
        **overrides,
    }


class ExportWorker(Worker):
    """arq's ``Worker``, woken by an enqueue instead of sleeping out its poll delay: between
    polls a worker with a free slot blocks on its queue's wake-up signal
    (``queue.WakeSignal``) for at most ``poll_delay``, so an idle worker starts a new export
    within milliseconds. Every other poll (deferred jobs, aborts, a missed signal) still
    happens at least every ``poll_delay``. Burst workers poll as arq does.

    ``yield_to``: another queue whose waiting jobs go first: while it has one, this worker
    starts none of its own unless the first has waited ``yield_max_s`` (the large pool of a
    process serving both queues, ``jobs/pools.py``)."""

    def __init__(
        self, *args: Any, yield_to: str | None = None, yield_max_s: float = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._wait_s = self.poll_delay_s
        self._wake: WakeSignal | None = None
        self._yield_to = yield_to if yield_max_s > 0 else None
        self._yield_max_s = yield_max_s
        self._yielding = False
        if not self.burst and self._wait_s > 0:
            # arq's loop sleeps out what is left of poll_delay after each poll; the wait
            # below paces it instead.
            self.poll_delay_s = 0

    async def _poll_iteration(self) -> None:
        await super()._poll_iteration()
        if self.burst or self._wait_s <= 0:
            return
        if self.job_counter >= self.max_jobs:
            # No free slot: a wake-up is for a worker that can take the job.
            await asyncio.sleep(self._wait_s)
            return
        if self._wake is None:
            settings: Settings = self.ctx[_SETTINGS]
            self._wake = WakeSignal(settings.redis, self.queue_name, max_wait_s=self._wait_s)
        await self._wake.wait(self._wait_s)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        if job_ids and self._yield_to is not None and await self._others_first(job_ids):
            return  # they stay queued; the next poll looks again
        await super().start_jobs(job_ids)

    async def _others_first(self, job_ids: list[bytes]) -> bool:
        """True while ``yield_to`` has a job waiting to start and the first of ours that is
        not already running has waited less than ``yield_max_s``. If Redis cannot say, arq's
        own read is failing too: start as usual."""
        assert self._yield_to is not None
        try:
            waiting, waited_s = await waiting_elsewhere(
                self.pool,
                other_queue=self._yield_to,
                queue=self.queue_name,
                job_ids=[job_id.decode() for job_id in job_ids],
            )
        except (RedisError, OSError):
            return False
        yielding = waiting and waited_s is not None and waited_s < self._yield_max_s
        if yielding != self._yielding:
            self._yielding = yielding
            log.info(
                "worker.yielding" if yielding else "worker.not_yielding",
                queue=self.queue_name,
                to=self._yield_to,
                waited_s=None if waited_s is None else round(waited_s, 1),
            )
        return yielding

    async def close(self) -> None:
        if self._wake is not None:
            await self._wake.aclose()
            self._wake = None
        await super().close()


def lower_priority(settings: Settings) -> None:
    """Step the process's CPU priority down to ``worker.nice`` (a worker's work waits; a
    request on the same box should not)."""
    wanted = settings.worker.nice
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if wanted > current:
        os.nice(wanted - current)
        log.info("worker.nice", nice=wanted)


def run_worker_forever(settings: Settings, *, large: bool = False) -> None:
    configure_logging(settings)
    lower_priority(settings)
    ExportWorker(**build_worker_settings(settings, large=large)).run()


async def worker_is_healthy(settings: Settings, *, large: bool = False) -> bool:
    """True when the worker on this host wrote its health key within the last interval."""
    redis = await open_arq_redis(settings.redis)
    try:
        return bool(await redis.exists(health_check_key(settings, large=large)))
    finally:
        await redis.aclose()


def check_worker_health(settings: Settings, *, large: bool = False) -> int:
    """Exit status for a liveness probe: 0 healthy, 1 not."""
    return 0 if asyncio.run(worker_is_healthy(settings, large=large)) else 1
