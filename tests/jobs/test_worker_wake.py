"""An idle worker starts a new export at the enqueue, not at its next poll, and one worker
process sends every export's email over one SMTP connection (jobs/worker.py ExportWorker,
queue.py WakeSignal, mail/smtp.py Mailer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from exporter.config import Settings
from exporter.dev.smtp import SmtpSink
from exporter.exports.create import Created, ExportRequest, create_export
from exporter.jobs.worker import ExportWorker, build_worker_settings, worker_is_healthy
from exporter.metrics import sample_value
from exporter.models import ExportJob, JobState
from exporter.queue import wake_key
from exporter.resources import Resources
from tests.conftest import MakeUser, SeedRows

# Long enough that a start within a second cannot be a poll.
POLL_DELAY_S = 5.0


@contextlib.asynccontextmanager
async def idle_worker(settings: Settings) -> AsyncIterator[ExportWorker]:
    """A real worker (not burst) with a long poll delay, waiting in its first wait."""
    worker_settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"poll_delay_s": POLL_DELAY_S})}
    )
    worker = ExportWorker(
        **build_worker_settings(worker_settings, handle_signals=False, cron_jobs=[])
    )
    task = asyncio.create_task(worker.main())
    try:
        # The health key is written at the end of the first poll; the wait follows it.
        for _ in range(200):
            if await worker_is_healthy(settings):
                break
            await asyncio.sleep(0.05)
        assert await worker_is_healthy(settings)
        await asyncio.sleep(0.3)
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


async def _finished(resources: Resources, job_id: str, *, within_s: float) -> ExportJob:
    async with asyncio.timeout(within_s):
        while True:
            job = await resources.jobs.get(job_id)
            if job is not None and job.status.is_terminal:
                return job
            await asyncio.sleep(0.02)


async def _create(resources: Resources, make_user: MakeUser, seed_rows: SeedRows) -> ExportJob:
    user = await make_user()
    await seed_rows(user.user_id, 20)
    created = await create_export(resources, user.user_id, ExportRequest())
    assert isinstance(created, Created)
    return created.job


@pytest.mark.slow
async def test_an_idle_worker_starts_a_new_export_at_once_and_keeps_one_smtp_connection(
    settings: Settings,
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
) -> None:
    connections_before = sample_value("exporter_smtp_connections_opened_total")
    async with idle_worker(settings):
        jobs = []
        for _ in range(3):
            # Each enqueue lands while the worker waits with most of its 5 s poll delay
            # ahead: a start within a second is the wake-up, never a poll.
            job = await _create(resources, make_user, seed_rows)
            done = await _finished(resources, job.job_id, within_s=POLL_DELAY_S)
            assert done.status is JobState.SUCCEEDED
            assert done.started_at is not None
            assert (done.started_at - job.created_at).total_seconds() < 1.0
            jobs.append(done)
            await asyncio.sleep(0.3)  # the worker is back in its wait
    for job in jobs:
        assert len(smtp_sink.for_export(job.job_id)) == 1
    # Three emails, one connection: the worker's mailer kept it open between exports.
    assert sample_value("exporter_smtp_connections_opened_total") - connections_before == 1
    # Each wake-up was taken: none is left for a worker that is not there.
    assert not await resources.queue.redis.exists(wake_key(settings.redis.queue_name))
