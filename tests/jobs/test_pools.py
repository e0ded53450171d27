"""One worker process serving both pools (``exporter worker --queue default --queue large``):
separate slots, one set of clients, one signal handler, health keys for both queues."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from pydantic import SecretStr

from exporter.config import Settings
from exporter.errors import RedisNotDurable
from exporter.jobs.pools import build_pool_workers, serve_pools
from exporter.jobs.worker import (
    ExportWorker,
    build_worker_settings,
    health_check_key,
    worker_is_healthy,
)
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.queue import pool_key
from exporter.resources import Resources, open_resources
from tests.conftest import MakeUser, SeedRows
from tests.faults.stack import PrivateRedis, Processes, process_env
from tests.helpers import until_status
from tests.pgproxy import stalling_proxy


async def _queued(resources: Resources, user_id: str, *, rows: int, large: bool) -> ExportJob:
    """A queued export on the queue it was routed to. Not through create: its count has a
    2 s bound, which a loaded machine can miss (the export then takes the default queue),
    and these tests are about the pools, not the routing (tests/exports/test_routing.py)."""
    new = ExportJob.new(user_id=user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600)
    job = dataclasses.replace(new, estimated_rows=rows, large=large)
    await resources.jobs.create(job)
    assert await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user_id), large=large)
    return job


def _one_slot_each(settings: Settings) -> Settings:
    """One small slot and one large slot in the process."""
    return settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                # A stop gives running jobs (a cron's sweep too) 5 s, not 60: inside the
                # 30 s these tests wait for the pools to stop.
                update={
                    "max_jobs": 1,
                    "large_max_jobs": 1,
                    "poll_delay_s": 0.05,
                    "shutdown_grace_s": 5,
                }
            ),
        }
    )


async def test_a_large_export_holding_the_large_slots_does_not_delay_a_small_one_in_the_process(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows, pg_dsn: str
) -> None:
    big, small = await make_user(), await make_user()
    await seed_rows(big.user_id, 30_000)  # ~6 MB of CSV: far more than passes the stall
    await seed_rows(small.user_id, 10)
    both = _one_slot_each(settings)
    # Export reads go through a network that goes quiet after 512 KiB per connection, so the
    # large export holds the large pool's one slot until the test lets it go; the small one
    # reads 10 rows on a connection of its own.
    async with stalling_proxy(5432, stall_after_bytes=512 * 1024) as proxy:
        stalled = pg_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}", 1)
        postgres = both.postgres.model_copy(update={"replica_dsn": SecretStr(stalled)})
        process = both.model_copy(update={"postgres": postgres})
        async with open_resources(process) as shared:
            workers = build_pool_workers(process, shared)
            default_pool, large_pool = workers
            assert (default_pool.queue_name, large_pool.queue_name) == (
                both.redis.queue_name,
                both.redis.large_queue,
            )
            assert (default_pool.max_jobs, large_pool.max_jobs) == (1, 1)
            stop = asyncio.Event()
            serving = asyncio.create_task(serve_pools(workers, stop))
            try:
                big_job = await _queued(shared, big.user_id, rows=30_000, large=True)
                await asyncio.wait_for(proxy.stalled.wait(), 30)

                small_job = await _queued(shared, small.user_id, rows=10, large=False)
                done = await until_status(shared, small_job.job_id, JobState.SUCCEEDED)
                assert done.row_count == 10
                still = await shared.jobs.get(big_job.job_id)
                assert still is not None and still.status is JobState.IN_PROGRESS
                # Both pools on one set of clients, each counting its own slots.
                assert default_pool.ctx["resources"] is shared is large_pool.ctx["resources"]
                redis = shared.queue.redis
                for queue in (both.redis.queue_name, both.redis.large_queue):
                    (member,) = await redis.zrange(pool_key(queue), 0, -1)
                    assert member.endswith(b"|1")  # "{worker_id}|{slots}"

                proxy.resume()
                finished = await until_status(shared, big_job.job_id, JobState.SUCCEEDED)
                assert finished.row_count == 30_000
            finally:
                # Whatever failed above, the large pool's running export must be able to end,
                # or stopping the pools waits for it and hides the failure.
                proxy.resume()
                stop.set()  # what SIGTERM does
                await asyncio.wait_for(serving, 30)
            # Each pool left its slots and its liveness key on the way out; the shared
            # clients are still open (this block closes them).
            assert not await redis.exists(pool_key(both.redis.queue_name))
            assert not await redis.exists(pool_key(both.redis.large_queue))
            assert await redis.ping()


@contextlib.asynccontextmanager
async def _serving(*workers: Worker) -> AsyncIterator[None]:
    """The workers served as the process serves them (``serve_pools``), stopped as SIGTERM
    stops them."""
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_pools(list(workers), stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)


def _yielding_for(settings: Settings, seconds: float) -> Settings:
    both = _one_slot_each(settings)
    return both.model_copy(
        update={"worker": both.worker.model_copy(update={"large_yield_max_s": seconds})}
    )


@contextlib.asynccontextmanager
async def _large_pool_with_one_of_each(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows, *, yield_max_s: float
) -> AsyncIterator[tuple[Resources, Worker, ExportJob, ExportJob]]:
    """The combined process's large pool (not started), on clients of its own, and a small
    export (10 rows) then a large one (200 rows), each ready on its queue."""
    both = _yielding_for(settings, yield_max_s)
    async with open_resources(both) as shared:
        _, large_pool = build_pool_workers(both, shared)
        small, big = await make_user(), await make_user()
        await seed_rows(small.user_id, 10)
        await seed_rows(big.user_id, 200)
        small_job = await _queued(shared, small.user_id, rows=10, large=False)
        big_job = await _queued(shared, big.user_id, rows=200, large=True)
        try:
            yield shared, large_pool, small_job, big_job
        finally:
            await shared.queue.redis.delete(both.redis.queue_name)


async def test_a_large_export_waits_while_a_small_one_waits_to_start(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    async with (
        _large_pool_with_one_of_each(settings, make_user, seed_rows, yield_max_s=60) as (
            shared,
            large_pool,
            small_job,
            big_job,
        ),
        _serving(large_pool),
    ):
        # The large pool polls every 50 ms; for a second it starts nothing while a
        # small export waits to start (nothing serves the default queue here).
        await asyncio.sleep(1)
        waiting = await shared.jobs.get(big_job.job_id)
        assert waiting is not None and waiting.status is JobState.QUEUED
        assert await shared.queue.redis.zscore(settings.redis.large_queue, big_job.job_id)
        # The small one leaves the queue (as when a default pool takes it, or it is
        # cancelled): the large one starts.
        await shared.queue.withdraw(small_job.job_id)
        then = await until_status(shared, big_job.job_id, JobState.SUCCEEDED)
    assert then.row_count == 200 and then.started_at is not None
    assert (then.started_at - then.created_at).total_seconds() >= 1


async def test_a_small_export_already_running_does_not_hold_a_large_one_back(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    """arq keeps a running job in its queue until it ends: only a small export waiting to
    start makes the large pool wait."""
    async with _large_pool_with_one_of_each(settings, make_user, seed_rows, yield_max_s=60) as (
        shared,
        large_pool,
        small_job,
        big_job,
    ):
        # No default pool runs here: the key arq sets when a worker starts a job stands in
        # for one running the small export.
        running = in_progress_key_prefix + small_job.job_id
        await shared.queue.redis.set(running, b"1", px=60_000)
        try:
            async with _serving(large_pool):
                done = await until_status(shared, big_job.job_id, JobState.SUCCEEDED)
        finally:
            await shared.queue.redis.delete(running)
    assert done.started_at is not None
    assert (done.started_at - done.created_at).total_seconds() < 30  # not the 60 s bound


async def test_a_large_export_waits_for_small_ones_at_most_large_yield_max_s(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    async with _large_pool_with_one_of_each(settings, make_user, seed_rows, yield_max_s=0.5) as (
        shared,
        large_pool,
        small_job,
        big_job,
    ):
        # The small one is ready the whole time: nothing serves the default queue here.
        async with _serving(large_pool):
            done = await until_status(shared, big_job.job_id, JobState.SUCCEEDED)
        still = await shared.jobs.get(small_job.job_id)
    assert done.row_count == 200 and done.started_at is not None
    assert (done.started_at - done.created_at).total_seconds() >= 0.5
    assert still is not None and still.status is JobState.QUEUED


async def _until(predicate: object, *, timeout_s: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {timeout_s} s")


async def test_the_combined_process_is_healthy_on_both_queues_and_stops_cleanly_on_sigterm(
    settings: Settings, resources: Resources, tmp_path: Path
) -> None:
    # A cron job running when SIGTERM comes (the sweep reads the jobs table every test of
    # the session shares) is given its grace: keep that well inside the wait below.
    processes = Processes(
        env=process_env(
            settings,
            EXPORTER_EXPORTS__ROUTING_ENABLED="true",
            EXPORTER_WORKER__SHUTDOWN_GRACE_S="10",
        ),
        logs=tmp_path,
    )
    proc = processes.spawn("worker", "--queue", "default", "--queue", "large")
    log = processes.log_of(proc)
    try:

        async def both_healthy() -> bool:
            return await worker_is_healthy(settings) and await worker_is_healthy(
                settings, large=True
            )

        await _until(both_healthy, timeout_s=60)
        for queues in ([], ["--queue", "large"], ["--queue", "default", "--queue", "large"]):
            check = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "exporter", "worker", "--check", *queues, env=processes.env
            )
            assert await check.wait() == 0

        proc.send_signal(signal.SIGTERM)
        try:
            stopped = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 30 s after SIGTERM:\n{log.read_text()}") from None
        assert stopped == 0, log.read_text()
    finally:
        processes.stop_all()
    text = log.read_text()
    assert text.count('"worker.ready"') == 2, text  # one per pool
    assert not await worker_is_healthy(settings)
    assert not await worker_is_healthy(settings, large=True)
    # Neither pool still claims slots (the ETA would count a dead process's).
    redis = resources.queue.redis
    assert not await redis.exists(pool_key(settings.redis.queue_name))
    assert not await redis.exists(pool_key(settings.redis.large_queue))
    for large in (False, True):
        assert not await redis.exists(health_check_key(settings, large=large))


@pytest.mark.parametrize("queues", [[], ["--queue", "default", "--queue", "large"]])
async def test_a_worker_process_lowers_its_cpu_priority_to_worker_nice(
    settings: Settings, tmp_path: Path, queues: list[str]
) -> None:
    """Both ways a worker process starts lower their priority before serving. (Not in the
    SIGTERM test above: on a loaded machine a niced process can take long to stop.)"""
    processes = Processes(env=process_env(settings, EXPORTER_WORKER__NICE="7"), logs=tmp_path)
    proc = processes.spawn("worker", *queues)
    log = processes.log_of(proc)

    async def niced() -> bool:
        return log.exists() and '"worker.nice"' in log.read_text()

    try:
        await _until(niced, timeout_s=60)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 7
    finally:
        processes.stop_all()


async def test_each_pool_has_its_own_slots_and_only_the_default_pool_runs_crons_and_metrics(
    settings: Settings, resources: Resources
) -> None:
    sized = settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                update={"max_jobs": 5, "large_max_jobs": 2, "metrics_port": 9}
            )
        }
    )
    default_pool, large_pool = build_pool_workers(sized, resources)
    # Both pools are woken by their queue's enqueue signal (test_worker_wake.py), not polled.
    assert isinstance(default_pool, ExportWorker) and isinstance(large_pool, ExportWorker)
    assert (default_pool.max_jobs, large_pool.max_jobs) == (5, 2)
    assert {c.name for c in default_pool.cron_jobs} == {
        "sweep_jobs",
        "expire_jobs",
        "run_export_schedules",
    }
    assert large_pool.cron_jobs == []
    assert default_pool.ctx["serve_metrics"] and not large_pool.ctx["serve_metrics"]
    assert default_pool.health_check_key == health_check_key(sized)
    assert large_pool.health_check_key == health_check_key(sized, large=True)


async def test_when_one_pool_ends_on_its_own_the_other_is_stopped_too(
    settings: Settings, resources: Resources
) -> None:
    # The large pool drains an empty queue and ends (burst): the process must not go on
    # serving only the default queue.
    default_pool = Worker(
        **build_worker_settings(settings, shared=resources, handle_signals=False, cron_jobs=[])
    )
    large_pool = Worker(
        **build_worker_settings(
            settings, large=True, shared=resources, handle_signals=False, burst=True
        )
    )
    await asyncio.wait_for(serve_pools([default_pool, large_pool], asyncio.Event()), 30)
    assert default_pool.main_task is not None and default_pool.main_task.done()
    assert not await worker_is_healthy(settings)
    assert await resources.queue.redis.ping()  # the shared clients stay open


async def test_a_pool_that_cannot_start_stops_the_process_with_its_reason(
    settings: Settings, resources: Resources, tmp_path: Path
) -> None:
    evicting = PrivateRedis(tmp_path, "--maxmemory-policy", "allkeys-lru")
    evicting.start()
    try:
        guarded = settings.model_copy(
            update={
                "redis": settings.redis.model_copy(
                    update={"url": SecretStr(evicting.url), "require_noeviction": True}
                )
            }
        )
        async with open_resources(guarded) as shared:
            workers = build_pool_workers(guarded, shared)
            with pytest.raises(RedisNotDurable):
                await asyncio.wait_for(serve_pools(workers, asyncio.Event()), 30)
            assert all(w.main_task is not None and w.main_task.done() for w in workers)
    finally:
        evicting.kill()
