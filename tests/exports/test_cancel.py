"""Cancelling exports on the real stack: the record, the arq job, and a worker mid-export."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq.jobs import Job
from arq.worker import Worker
from botocore.exceptions import ClientError
from pydantic import SecretStr

from exporter.config import Settings
from exporter.dev.ports import free_port
from exporter.dev.smtp import SmtpSink
from exporter.errors import RetryLater, StoreUnavailable
from exporter.exports.cancel import AlreadyFinished, cancel_export
from exporter.exports.message import export_message
from exporter.jobs.expire import expire_files
from exporter.jobs.run import run_export
from exporter.jobs.worker import build_worker_settings, on_startup, resources_of
from exporter.keys import RESOURCES
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.resources import Resources, open_resources
from exporter.store.files import ExportFiles
from exporter.store.jobs import JobStore
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import DynamoCalls, login, with_exports
from tests.pgproxy import stalling_proxy

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


@dataclasses.dataclass(frozen=True)
class RunningExport:
    resources: Resources
    worker: Worker
    job: ExportJob
    arq_job: Job


@contextlib.asynccontextmanager
async def export_on_a_worker(settings: Settings, user_id: str) -> AsyncIterator[RunningExport]:
    """One export queued and a real arq worker running it; the worker stops when the block
    ends. No crons: these tests pin what the export's own run does, not what a sweep adds."""
    worker = Worker(
        **build_worker_settings(settings, handle_signals=False, poll_delay=0.05, cron_jobs=[])
    )
    async with open_resources(settings) as resources:
        job = ExportJob.new(user_id=user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600)
        await resources.jobs.create(job)
        await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user_id))
        arq_job = Job(job.job_id, resources.queue.redis, _queue_name=settings.redis.queue_name)
        task = asyncio.create_task(worker.main())
        try:
            yield RunningExport(resources, worker, job, arq_job)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.close()


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
    async with export_on_a_worker(settings, user.user_id) as run:
        # Hold the export's COPY inside PostgreSQL: the worker is mid-export, for as long
        # as this transaction lasts.
        async with pg.transaction():
            await pg.execute("LOCK TABLE memberships IN ACCESS EXCLUSIVE MODE")
            await _until(lambda: _copy_is_waiting(pg))
            running = await run.resources.jobs.get(run.job.job_id)
            assert running is not None and running.status is JobState.IN_PROGRESS

            cancelled = await cancel_export(run.resources, running)

            assert cancelled.status is JobState.CANCELLED
            # The worker stops while the COPY is still blocked: it was cancelled, it did
            # not run to the end.
            await _until(lambda: _has_result(run.arq_job))
        info = await run.arq_job.result_info()
        assert info is not None and not info.success
        assert isinstance(info.result, asyncio.CancelledError)
        final = await run.resources.jobs.get(run.job.job_id)
    job, worker = run.job, run.worker
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


# --- bytes on disk when the abort comes ------------------------------------------------------


async def test_an_export_aborted_mid_stream_leaves_no_file_behind(
    settings: Settings,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 30_000)  # ~6 MB of CSV: far more than passes the stall
    # The export's reads go through a network that goes quiet after 512 KiB: the COPY has
    # written that much to a real file on disk (the spool rolls over past 1 byte) and waits.
    async with stalling_proxy(5432, stall_after_bytes=512 * 1024) as proxy:
        stalled_dsn = pg_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}", 1)
        settings = settings.model_copy(
            update={
                "exports": settings.exports.model_copy(
                    update={"temp_dir": tmp_path, "spool_max_bytes": 1}
                ),
                "postgres": settings.postgres.model_copy(
                    update={"replica_dsn": SecretStr(stalled_dsn)}
                ),
            }
        )
        async with export_on_a_worker(settings, user.user_id) as run:
            await asyncio.wait_for(proxy.stalled.wait(), 30)
            await _until(lambda: _has_bytes_on_disk(tmp_path))
            on_disk = _sizes_of_open_files(tmp_path)
            running = await run.resources.jobs.get(run.job.job_id)
            assert running is not None and running.status is JobState.IN_PROGRESS

            cancelled = await cancel_export(run.resources, running)

            # The abort reached the run: asyncpg asks PostgreSQL to cancel the COPY...
            await _until(lambda: _true(proxy.cancel_requests > 0))
            # ...and waits for the answer, which the quiet network now lets through.
            proxy.resume()
            await _until(lambda: _has_result(run.arq_job))
            info = await run.arq_job.result_info()
            final = await run.resources.jobs.get(run.job.job_id)
    job, worker = run.job, run.worker
    assert info is not None and not info.success
    assert isinstance(info.result, asyncio.CancelledError)
    assert len(on_disk) == 1 and on_disk[0] > 64 * 1024  # bytes really were on disk
    assert final is not None and final.status is JobState.CANCELLED
    assert final.finished_at == cancelled.finished_at
    assert _open_files_under(tmp_path) == []
    assert os.listdir(tmp_path) == []
    assert not smtp_sink.for_export(job.job_id)
    assert worker.jobs_complete == 0 and worker.jobs_retried == 0


def _sizes_of_open_files(folder: Path) -> list[int]:
    """Sizes of the files this process holds open inside ``folder`` (unlinked ones too)."""
    sizes = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
                sizes.append(os.fstat(int(fd)).st_size)
    return sizes


async def _has_bytes_on_disk(folder: Path) -> bool:
    return any(size > 0 for size in _sizes_of_open_files(folder))


async def _true(value: bool) -> bool:
    return value


# --- a file already in S3 when the export is cancelled --------------------------------------


def _via_s3(settings: Settings) -> Settings:
    """Attach nothing (the limit is below any real message): every file goes to S3, in
    5 MiB parts."""
    return settings.model_copy(
        update={
            "exports": settings.exports.model_copy(update={"attachment_max_bytes": 1024}),
            "s3": settings.s3.model_copy(update={"part_size_bytes": 5 * 1024 * 1024}),
        }
    )


async def _object_exists(resources: Resources, key: str) -> bool:
    try:
        await resources.files._client.head_object(Bucket=resources.files.bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


async def _uploads_pending(resources: Resources, key: str) -> list[Any]:
    listing = await resources.files._client.list_multipart_uploads(
        Bucket=resources.files.bucket, Prefix=key
    )
    return list(listing.get("Uploads", []))


async def test_cancelling_an_export_whose_file_is_in_s3_deletes_the_object_at_once(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 50)
    via_s3 = _via_s3(settings)
    no_smtp = via_s3.model_copy(
        update={"smtp": via_s3.smtp.model_copy(update={"port": free_port()})}
    )
    async with open_resources(via_s3) as resources:
        job = ExportJob.new(
            user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600
        )
        await resources.jobs.create(job)
        # A run uploaded the file, then could not reach the mail server: it waits for a retry.
        async with open_resources(no_smtp) as broken:
            with pytest.raises(RetryLater):
                await run_export(
                    broken,
                    ExportMessageV1(job.job_id, user.user_id).to_payload(),
                    attempt=1,
                    max_attempts=3,
                )
        waiting = await resources.jobs.get(job.job_id)
        assert waiting is not None and waiting.file_key is not None
        assert await _object_exists(resources, waiting.file_key)

        cancelled = await cancel_export(resources, waiting)

        assert cancelled.status is JobState.CANCELLED
        assert not await _object_exists(resources, waiting.file_key)
        # The key stays on the record: the expiry cron deletes it once more, in case an
        # upload still in flight landed after this delete.
        assert cancelled.file_key == waiting.file_key
        await expire_files(resources)  # (the table is shared: other tests' files count too)
        forgotten = await resources.jobs.get(job.job_id)
        assert forgotten is not None and forgotten.file_key is None
    assert not smtp_sink.for_export(job.job_id)


class PausedUploads(ExportFiles):
    """The real bucket, with each upload held at its start until ``go`` is set."""

    def __init__(self, base: ExportFiles) -> None:
        self.__dict__.update(base.__dict__)
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()

    async def upload(self, key: str, source: IO[bytes], *, size: int, content_type: str) -> None:
        self.waiting.set()
        await self.go.wait()
        await super().upload(key, source, size=size, content_type=content_type)


class HeartbeatsLost(JobStore):
    """The real store, with every progress write lost to a DynamoDB brownout (the run goes
    on: ``export.progress_not_recorded``), so nothing confirms the run owns the job after
    its start."""

    def __init__(self, base: JobStore) -> None:
        self.__dict__.update(base.__dict__)

    async def record_progress(self, job_id: str, **_: Any) -> None:
        raise StoreUnavailable(f"record_progress {job_id}: throttled")


async def test_an_upload_that_lands_after_the_cancel_is_removed_by_its_own_run(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    """A run whose ownership was last confirmed more than a progress interval ago (its
    heartbeats lost) reads the record before it sends (the last look), finds it cancelled,
    sends nothing and removes what it uploaded."""
    user = await make_user()
    await seed_rows(user.user_id, 50)
    interval_s = 0.05
    async with open_resources(_via_s3(settings)) as resources:
        job = ExportJob.new(
            user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600
        )
        await resources.jobs.create(job)
        files = PausedUploads(resources.files)
        brownout = dataclasses.replace(
            with_exports(resources, progress_interval_s=interval_s),
            files=files,
            jobs=HeartbeatsLost(resources.jobs),
        )
        run = asyncio.create_task(
            run_export(brownout, export_message(job).to_payload(), attempt=1, max_attempts=3)
        )
        await asyncio.wait_for(files.waiting.wait(), 30)
        uploading = await resources.jobs.get(job.job_id)
        assert uploading is not None and uploading.file_key is not None

        # No arq job here, so no abort reaches the run (as when Redis is away): the cancel
        # deletes an object that is not there yet, then the upload completes.
        await cancel_export(resources, uploading)
        await asyncio.sleep(2 * interval_s)  # the run's start is now older than an interval
        files.go.set()
        outcome = await asyncio.wait_for(run, 30)

        assert outcome is None  # the run found the export cancelled and stopped
        assert not await _object_exists(resources, uploading.file_key)
        final = await resources.jobs.get(job.job_id)
    assert final is not None and final.status is JobState.CANCELLED
    assert not smtp_sink.for_export(job.job_id)


async def test_a_cancel_within_a_progress_interval_of_the_last_heartbeat_is_refused_at_the_end(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    """A run whose own write confirmed it owned the job less than a progress interval ago
    sends without reading the record first: only a cancel can have changed it since, and
    the cancel's abort stops the run. When the abort does not reach the run (no arq job
    here, as when Redis is away), the email goes out (the window docs/reliability.md
    describes), but the run's one write at delivery refuses to record a cancelled export:
    the record stays cancelled and the run removes the file it stored."""
    user = await make_user()
    await seed_rows(user.user_id, 50)
    async with open_resources(_via_s3(settings)) as resources:
        job = ExportJob.new(
            user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600
        )
        await resources.jobs.create(job)
        files = PausedUploads(resources.files)
        # An interval nothing in this test comes near: the run's start stays fresh.
        young = dataclasses.replace(with_exports(resources, progress_interval_s=30), files=files)
        run = asyncio.create_task(
            run_export(young, export_message(job).to_payload(), attempt=1, max_attempts=3)
        )
        await asyncio.wait_for(files.waiting.wait(), 30)
        uploading = await resources.jobs.get(job.job_id)
        assert uploading is not None and uploading.file_key is not None

        cancelled = await cancel_export(resources, uploading)
        with DynamoCalls() as calls:
            files.go.set()
            outcome = await asyncio.wait_for(run, 30)

        assert outcome is None
        # From the upload on: the refused write, then the run's check before it removes
        # its file; no read before the email.
        assert calls.calls == {"UpdateItem": 1, "GetItem": 1}, calls.calls
        assert not await _object_exists(resources, uploading.file_key)
        final = await resources.jobs.get(job.job_id)
    assert final is not None and final.status is JobState.CANCELLED
    assert final.finished_at == cancelled.finished_at and final.delivered_at is None
    assert len(smtp_sink.for_export(job.job_id)) == 1


class PausedSecondPart:
    """The real S3 client, with a multipart upload held before its second part."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def upload_part(self, **kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            self.waiting.set()
            await asyncio.Event().wait()  # until the abort cancels the run
        return await self._client.upload_part(**kwargs)


async def test_an_abort_mid_upload_leaves_no_object_and_no_parts(
    settings: Settings, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 32_000)  # ~7 MB of CSV: two 5 MiB parts
    via_s3 = _via_s3(settings)
    paused: list[PausedSecondPart] = []

    async def startup(ctx: dict[str, Any]) -> None:
        await on_startup(ctx)
        real = resources_of(ctx)
        paused.append(PausedSecondPart(real.files._client))
        ctx["resources"] = dataclasses.replace(real, files=ExportFiles(paused[0], via_s3.s3))

    worker = Worker(
        **build_worker_settings(
            via_s3, handle_signals=False, poll_delay=0.05, cron_jobs=[], on_startup=startup
        )
    )
    async with open_resources(via_s3) as resources:
        job = ExportJob.new(
            user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600
        )
        await resources.jobs.create(job)
        await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))
        arq_job = Job(job.job_id, resources.queue.redis, _queue_name=via_s3.redis.queue_name)
        task = asyncio.create_task(worker.main())
        try:
            await _until(lambda: _true(bool(paused) and paused[0].waiting.is_set()), timeout_s=60)
            uploading = await resources.jobs.get(job.job_id)
            assert uploading is not None and uploading.file_key is not None
            assert await _uploads_pending(resources, uploading.file_key)  # part 1 is up

            await cancel_export(resources, uploading)

            await _until(lambda: _has_result(arq_job))
            info = await arq_job.result_info()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.close()
        assert info is not None and isinstance(info.result, asyncio.CancelledError)
        assert await _uploads_pending(resources, uploading.file_key) == []
        assert not await _object_exists(resources, uploading.file_key)
        final = await resources.jobs.get(job.job_id)
    assert final is not None and final.status is JobState.CANCELLED
    assert not smtp_sink.for_export(job.job_id)
