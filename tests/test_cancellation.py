"""Cancelling exports on the real stack: the record, the arq job, and a worker mid-export."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq.jobs import Job
from arq.worker import Worker

from exporter.cancellation import AlreadyFinished, cancel_export
from exporter.config import Settings
from exporter.dev.smtp import SmtpSink
from exporter.jobs.worker import build_worker_settings
from exporter.keys import RESOURCES
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.resources import Resources, open_resources
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import login

Client = TestClient[Any, Any]


async def test_owner_cancels_a_queued_export_and_no_worker_runs_it(
    client: Client,
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    headers = await login(client, user)
    export_id = (await (await client.post("/v1/exports", headers=headers)).json())["id"]

    response = await client.delete(f"/v1/exports/{export_id}", headers=headers)

    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["id"] == export_id and body["status"] == "cancelled"
    assert body["finished_at"] and body["error"] is None
    shown = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert shown == body

    worker = await run_worker()
    assert worker.jobs_complete == 0  # arq dropped it: "aborted before start"
    assert not smtp_sink.for_export(export_id)
    record = await client.app[RESOURCES].jobs.get(export_id)
    assert record is not None and record.status is JobState.CANCELLED


async def test_cancelling_a_finished_export_is_409_and_changes_nothing(
    client: Client, make_user: MakeUser, run_worker: RunWorker
) -> None:
    headers = await login(client, await make_user())
    export_id = (await (await client.post("/v1/exports", headers=headers)).json())["id"]
    await run_worker()
    jobs = client.app[RESOURCES].jobs
    done = await jobs.get(export_id)
    assert done is not None and done.status is JobState.SUCCEEDED

    response = await client.delete(f"/v1/exports/{export_id}", headers=headers)

    assert response.status == 409
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["code"] == "export_finished" and "succeeded" in problem["detail"]
    assert await jobs.get(export_id) == done


async def test_a_second_cancel_is_409(client: Client, make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    export_id = (await (await client.post("/v1/exports", headers=headers)).json())["id"]
    assert (await client.delete(f"/v1/exports/{export_id}", headers=headers)).status == 200
    again = await client.delete(f"/v1/exports/{export_id}", headers=headers)
    assert again.status == 409
    assert (await again.json())["code"] == "export_finished"


async def test_cancel_needs_the_write_scope(client: Client, make_user: MakeUser) -> None:
    owner = await make_user(scopes=["exports:read", "exports:write"])
    headers = await login(client, owner)
    export_id = (await (await client.post("/v1/exports", headers=headers)).json())["id"]
    reader = await login(client, await make_user(scopes=["exports:read"]))
    response = await client.delete(f"/v1/exports/{export_id}", headers=reader)
    assert response.status == 403


async def test_a_lost_race_with_the_finishing_worker_reports_how_it_ended(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    job = ExportJob.new(user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=60)
    await resources.jobs.create(job)
    # The caller read it queued; a worker finished it before the cancel was written.
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())
    await resources.jobs.transition(job.job_id, to=JobState.SUCCEEDED, now=utcnow())

    with pytest.raises(AlreadyFinished) as raised:
        await cancel_export(resources, job)

    assert raised.value.job.status is JobState.SUCCEEDED


def _open_files_under(folder: Path) -> list[str]:
    """Files this process holds open inside ``folder`` (unlinked temp files included)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                found.append(target)
    return found


async def test_a_running_export_is_aborted_and_stays_cancelled(
    settings: Settings,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
    tmp_path: Path,
) -> None:
    exports = settings.exports.model_copy(update={"temp_dir": tmp_path, "spool_max_bytes": 1})
    settings = settings.model_copy(update={"exports": exports})
    user = await make_user()
    await seed_rows(user.user_id, 50)
    # No crons: this pins what the export's own run does, not what a sweep might add.
    worker = Worker(
        **build_worker_settings(settings, handle_signals=False, poll_delay=0.05, cron_jobs=[])
    )
    async with open_resources(settings) as resources:
        job = ExportJob.new(
            user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600
        )
        await resources.jobs.create(job)
        await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))
        arq_job = Job(job.job_id, resources.queue.redis, _queue_name=settings.redis.queue_name)
        task = asyncio.create_task(worker.main())
        try:
            # Hold the export's COPY inside PostgreSQL: the worker is mid-export, for as long
            # as this transaction lasts.
            async with pg.transaction():
                await pg.execute("LOCK TABLE memberships IN ACCESS EXCLUSIVE MODE")
                await _until(lambda: _copy_is_waiting(pg))
                running = await resources.jobs.get(job.job_id)
                assert running is not None and running.status is JobState.IN_PROGRESS

                cancelled = await cancel_export(resources, running)

                assert cancelled.status is JobState.CANCELLED
                # The worker stops while the COPY is still blocked: it was cancelled, it did
                # not run to the end.
                await _until(lambda: _has_result(arq_job))
            info = await arq_job.result_info()
            assert info is not None and not info.success
            assert isinstance(info.result, asyncio.CancelledError)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.close()
        final = await resources.jobs.get(job.job_id)
    assert final is not None and final.status is JobState.CANCELLED
    assert final.finished_at == cancelled.finished_at and final.error_code is None
    assert not smtp_sink.for_export(job.job_id)
    assert _open_files_under(tmp_path) == []
    assert worker.jobs_complete == 0 and worker.jobs_retried == 0


async def _copy_is_waiting(pg: asyncpg.Connection[Any]) -> bool:
    waiting = await pg.fetchval(
        "SELECT count(*) FROM pg_locks WHERE relation = 'memberships'::regclass AND NOT granted"
    )
    return bool(waiting)


async def _has_result(job: Job) -> bool:
    return await job.result_info() is not None


async def _until(check: Any, *, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{check} stayed false for {timeout_s} s")
