"""Size-aware routing: an export is counted at create and goes to the default or the large
queue; everything that later touches its message (cancel, the sweeper, workers) finds it
there. And a waiting export's place in its queue, with its ETA."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from arq.constants import abort_jobs_ss, in_progress_key_prefix
from arq.worker import Worker
from pydantic import SecretStr

from exporter.config import Settings
from exporter.dev.ports import free_port
from exporter.dev.smtp import SmtpSink
from exporter.exports.cancel import cancel_export
from exporter.exports.create import Created, ExportRequest, create_export
from exporter.exports.lifecycle import mark_failed
from exporter.exports.retry import retry_export
from exporter.jobs.sweep import sweep_jobs
from exporter.jobs.worker import build_worker_settings
from exporter.keys import RESOURCES
from exporter.models import ExportFormat, ExportJob, JobState, utcnow
from exporter.queue import runs_key
from exporter.resources import Resources, open_resources
from tests.conftest import MakeUser, SeedRows
from tests.helpers import login, until_status, with_exports
from tests.pgproxy import stalling_proxy

THRESHOLD = 100


async def _create(resources: Resources, user_id: str) -> ExportJob:
    result = await create_export(resources, user_id, ExportRequest())
    assert isinstance(result, Created)
    return result.job


async def _on(resources: Resources, queue: str, job_id: str) -> bool:
    return await resources.queue.redis.zscore(queue, job_id) is not None


async def test_a_large_users_export_goes_to_the_large_queue_and_a_small_users_to_the_default(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    routed = with_exports(resources, large_threshold_rows=THRESHOLD)
    big, small = await make_user(), await make_user()
    await seed_rows(big.user_id, THRESHOLD + 1)
    await seed_rows(small.user_id, THRESHOLD)  # at the threshold: still small
    default, large = resources.settings.redis.queue_name, resources.settings.redis.large_queue

    big_job = await _create(routed, big.user_id)
    small_job = await _create(routed, small.user_id)

    assert (big_job.large, big_job.estimated_rows) == (True, THRESHOLD + 1)
    assert (small_job.large, small_job.estimated_rows) == (False, THRESHOLD)
    assert await _on(resources, large, big_job.job_id)
    assert not await _on(resources, default, big_job.job_id)
    assert await _on(resources, default, small_job.job_id)
    assert not await _on(resources, large, small_job.job_id)
    # The record keeps where it went, for the sweeper and an operator's retry.
    stored = await resources.jobs.get(big_job.job_id)
    assert stored is not None and stored.large and stored.estimated_rows == THRESHOLD + 1
    assert large == f"{default}:large"


async def test_routing_off_or_a_zero_threshold_keeps_one_queue(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    default, large = resources.settings.redis.queue_name, resources.settings.redis.large_queue
    for changes in (
        {"routing_enabled": False, "large_threshold_rows": THRESHOLD},
        {"large_threshold_rows": 0},
    ):
        user = await make_user()
        await seed_rows(user.user_id, THRESHOLD * 2)
        job = await _create(with_exports(resources, **changes), user.user_id)
        assert not job.large and job.estimated_rows is None  # not even counted
        assert await _on(resources, default, job.job_id)
        assert not await _on(resources, large, job.job_id)


async def test_a_count_that_fails_routes_to_the_default_queue_and_the_create_succeeds(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, THRESHOLD * 2)
    # PostgreSQL is down for the API: nothing listens where its pool connects.
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/exporter"
    pool = await asyncpg.create_pool(dead, min_size=0, max_size=1)
    try:
        no_pg = dataclasses.replace(
            with_exports(resources, large_threshold_rows=THRESHOLD), pg=pool
        )
        started = time.monotonic()
        job = await _create(no_pg, user.user_id)
        took = time.monotonic() - started
    finally:
        await pool.close()
    assert not job.large and job.estimated_rows is None
    assert await _on(resources, resources.settings.redis.queue_name, job.job_id)
    assert took < 5


async def test_a_count_that_fails_routes_by_the_size_of_the_users_last_export(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, THRESHOLD * 2)
    routed = with_exports(resources, large_threshold_rows=THRESHOLD)
    last = await _create(routed, user.user_id)
    assert (last.large, last.estimated_rows) == (True, THRESHOLD * 2)
    await cancel_export(routed, last)  # the slot is free again, its size kept
    # The morning of the 1st: PostgreSQL cannot answer the API's count in time.
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/exporter"
    pool = await asyncpg.create_pool(dead, min_size=0, max_size=1)
    try:
        job = await _create(dataclasses.replace(routed, pg=pool), user.user_id)
    finally:
        await pool.close()
    # Routed as large by last time's size, not sent to the small exports' queue blind.
    assert (job.large, job.estimated_rows) == (True, THRESHOLD * 2)
    assert await _on(resources, resources.settings.redis.large_queue, job.job_id)
    assert not await _on(resources, resources.settings.redis.queue_name, job.job_id)
    await resources.queue.redis.zrem(resources.settings.redis.large_queue, job.job_id)


async def test_cancel_and_the_sweeper_find_a_job_on_the_large_queue(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    large = resources.settings.redis.large_queue
    routed = with_exports(resources, large_threshold_rows=THRESHOLD)
    user = await make_user()
    await seed_rows(user.user_id, THRESHOLD + 1)
    job = await _create(routed, user.user_id)
    assert (await resources.queue.probe(job.job_id)).queued

    cancelled = await cancel_export(resources, job)

    assert cancelled.status is JobState.CANCELLED
    # arq's abort: the message jumps to the front of its own queue, marked aborted.
    assert await resources.queue.redis.zscore(large, job.job_id) == 1
    assert await resources.queue.redis.zscore(abort_jobs_ss, job.job_id) is not None
    assert not await _on(resources, resources.settings.redis.queue_name, job.job_id)

    # A large export Redis lost goes back to the large queue.
    lost = ExportJob.new(
        user_id=(await make_user()).user_id,
        fmt=ExportFormat.CSV,
        now=utcnow() - timedelta(seconds=60),
        retention_s=3600,
        estimated_rows=THRESHOLD + 1,
        large=True,
    )
    await resources.jobs.create(lost)
    report = await sweep_jobs(resources)
    assert lost.job_id in report.requeued_lost
    assert await _on(resources, large, lost.job_id)
    assert not await _on(resources, resources.settings.redis.queue_name, lost.job_id)

    # An operator's retry of a failed large export: the large queue again.
    await resources.queue.withdraw(lost.job_id)
    failed = await mark_failed(
        resources.jobs, lost.job_id, code="timed_out", message="test", expected=None
    )
    retried = await retry_export(resources, failed)
    assert retried.status is JobState.QUEUED and retried.large
    assert await _on(resources, large, lost.job_id)
    assert not await _on(resources, resources.settings.redis.queue_name, lost.job_id)


@contextlib.asynccontextmanager
async def _worker(settings: Settings, *, large: bool) -> AsyncIterator[Worker]:
    worker = Worker(
        **build_worker_settings(
            settings, large=large, handle_signals=False, poll_delay=0.05, cron_jobs=[]
        )
    )
    task = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


async def _runs(resources: Resources, queue: str, *, expected: int, timeout_s: float = 5) -> int:
    """How many runs the queue's workers measured, once that is ``expected`` (or the count at
    the timeout). A worker measures a run after it has written the success, so the count can
    lag the status a reader sees by one Redis call."""
    count = -1
    for _ in range(int(timeout_s / 0.02)):
        async with resources.queue.redis.pipeline(transaction=False) as pipe:
            pipe.llen(runs_key(queue))  # a pipeline: redis-py's stubs type LLEN as maybe-sync
            (count,) = await pipe.execute()
        if count == expected:
            break
        await asyncio.sleep(0.02)
    return count


async def test_a_small_export_finishes_while_a_large_one_holds_the_large_pool(
    settings: Settings,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg_dsn: str,
) -> None:
    big, small = await make_user(), await make_user()
    await seed_rows(big.user_id, 30_000)  # ~6 MB of CSV: far more than passes the stall
    await seed_rows(small.user_id, 10)
    routed = settings.model_copy(
        update={"exports": settings.exports.model_copy(update={"large_threshold_rows": THRESHOLD})}
    )
    # The large pool reads through a network that goes quiet after 512 KiB, so its one
    # slot stays busy with the large export until the test lets it go.
    async with stalling_proxy(5432, stall_after_bytes=512 * 1024) as proxy:
        stalled = pg_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}", 1)
        large_settings = routed.model_copy(
            update={
                "postgres": routed.postgres.model_copy(update={"replica_dsn": SecretStr(stalled)}),
                "worker": routed.worker.model_copy(update={"max_jobs": 1}),
            }
        )
        async with (
            open_resources(routed) as resources,
            _worker(large_settings, large=True),
            _worker(routed, large=False),
        ):
            try:
                big_job = await _create(resources, big.user_id)
                assert big_job.large
                await asyncio.wait_for(proxy.stalled.wait(), 30)

                small_job = await _create(resources, small.user_id)
                assert not small_job.large
                done = await until_status(resources, small_job.job_id, JobState.SUCCEEDED)

                still = await resources.jobs.get(big_job.job_id)
                assert still is not None and still.status is JobState.IN_PROGRESS
                assert done.row_count == 10
                # The default pool measured its run, for the ETA of the next ones.
                assert await _runs(resources, routed.redis.queue_name, expected=1) == 1
            finally:
                # Whatever failed above, the large worker's close waits for its running
                # export: let it finish rather than hang the test until its timeout.
                proxy.resume()
            finished = await until_status(resources, big_job.job_id, JobState.SUCCEEDED)
            assert finished.row_count == 30_000
            assert await _runs(resources, routed.redis.large_queue, expected=1) == 1
            await resources.queue.redis.delete(routed.redis.large_queue)


async def test_queue_position_and_eta_of_three_waiting_exports(
    resources: Resources, make_user: MakeUser
) -> None:
    jobs = [await _create(resources, (await make_user()).user_id) for _ in range(3)]
    ids = [j.job_id for j in jobs]
    queue = resources.queue
    now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    now_ms = int(now.timestamp() * 1000)

    async def places() -> list[Any]:
        return [await queue.place(i, large=False, estimated_rows=0, now_ms=now_ms) for i in ids]

    # Nothing measured yet: positions, but no guess at times.
    first = await places()
    assert [p.position for p in first] == [1, 2, 3]
    assert all(p.estimate.start_at is None and p.estimate.finish_at is None for p in first)

    # Two runs of 2 s measured; one worker process with one slot serves the queue.
    for _ in range(2):
        await queue.record_run(large=False, rows=1000, duration_s=2.0)
    await queue.join_pool("w-1", large=False, slots=1, ttl_s=60, now_ms=now_ms)
    measured = await places()
    assert [p.position for p in measured] == [1, 2, 3]
    assert [p.estimate.start_at for p in measured] == [
        now,
        now + timedelta(seconds=2),
        now + timedelta(seconds=4),
    ]
    # Each takes at least the shortest run seen (its size, 0 rows, would say less).
    assert [p.estimate.finish_at for p in measured] == [
        now + timedelta(seconds=2),
        now + timedelta(seconds=4),
        now + timedelta(seconds=6),
    ]

    # The first is taken by a worker: it no longer waits, the others move up behind it.
    await queue.redis.set(in_progress_key_prefix + ids[0], b"1", px=60_000)
    try:
        running, second, third = await places()
        assert running is None
        assert (second.position, second.running_ahead) == (1, 1)
        assert third.position == 2
        assert second.estimate.start_at == now + timedelta(seconds=2)  # when the slot frees
        # A second slot: the next one starts at once.
        await queue.join_pool("w-2", large=False, slots=1, ttl_s=60, now_ms=now_ms)
        _, second, _ = await places()
        assert second.estimate.start_at == now
        # A large export is estimated from its size and the measured rows per second.
        big = await queue.place(ids[2], large=False, estimated_rows=50_000, now_ms=now_ms)
        assert big is not None and big.estimate.start_at is not None
        assert big.estimate.finish_at == big.estimate.start_at + timedelta(seconds=100)
    finally:
        await queue.redis.delete(in_progress_key_prefix + ids[0])


async def test_the_api_shows_a_waiting_exports_place_and_eta(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    resources = client.app[RESOURCES]
    ids = []
    for _ in range(3):
        headers = await login(client, await make_user())
        created = await client.post("/v1/exports", json={"format": "csv"}, headers=headers)
        assert created.status == 202
        ids.append(((await created.json())["id"], headers))
    await resources.queue.record_run(large=False, rows=1000, duration_s=1.0)
    await resources.queue.join_pool("w-1", large=False, slots=1, ttl_s=60)

    bodies = [await (await client.get(f"/v1/exports/{i}", headers=h)).json() for i, h in ids]

    assert [b["queue_position"] for b in bodies] == [1, 2, 3]
    assert all(b["estimated_rows"] == 0 for b in bodies)
    starts = [datetime.fromisoformat(b["estimated_start_at"]) for b in bodies]
    finishes = [datetime.fromisoformat(b["estimated_finish_at"]) for b in bodies]
    # One slot, 1 s a job: a second apart, plus the time between the reads (each is
    # estimated from when it was read; generous for a busy test machine).
    for earlier, later in itertools.pairwise(starts):
        assert 1.0 <= (later - earlier).total_seconds() < 10
    assert all(f > s for s, f in zip(starts, finishes, strict=True))
    # Not waiting any more: no place, no ETA.
    export_id, headers = ids[0]
    await client.delete(f"/v1/exports/{export_id}", headers=headers)
    body = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert body["queue_position"] is None and body["estimated_start_at"] is None
