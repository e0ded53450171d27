"""The export job on real services: API → DynamoDB → arq → PostgreSQL → CSV → SMTP sink."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from exporter.config import Settings
from exporter.dev.smtp import OutboxHandler, SmtpSink
from exporter.jobs.run import ExportOutcome, RetryLater, run_export
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.resources import Resources, open_resources
from exporter.store.jobs import JobStore
from exporter.store.memberships import EXPORT_HEADER
from exporter.store.seed import seed_memberships
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import RAW_EXPORT_QUERY, login, reference_row


def attachment_rows(message: EmailMessage) -> list[list[str]]:
    (part,) = list(message.iter_attachments())
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return list(csv.reader(io.StringIO(payload.decode("utf-8"), newline="")))


async def expected_rows(pg: asyncpg.Connection[Any], user_id: str) -> list[list[str]]:
    """The user's memberships straight from PostgreSQL, rendered the way the CSV promises."""
    return [reference_row(r) for r in await pg.fetch(RAW_EXPORT_QUERY, user_id)]


async def deliver(
    resources: Resources, job_id: str, user_id: str, *, attempt: int = 1
) -> ExportOutcome | None:
    """One delivery of the job's queue message, as the worker would run it."""
    payload = ExportMessageV1(job_id, user_id).to_payload()
    return await run_export(resources, payload, attempt=attempt, max_attempts=3)


async def new_job(resources: Resources, user_id: str) -> ExportJob:
    job = ExportJob.new(user_id=user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=3600)
    await resources.jobs.create(job)
    return job


async def test_requested_export_is_emailed_with_exactly_the_users_rows(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
) -> None:
    owner, stranger = await make_user(), await make_user()
    await seed_rows(owner.user_id, 2500)
    await seed_rows(stranger.user_id, 300)
    headers = await login(client, owner)

    created = await client.post("/v1/exports", json={"format": "csv"}, headers=headers)
    assert created.status == 202
    export_id = (await created.json())["id"]

    worker = await run_worker()
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0

    job = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert job["status"] == "succeeded"
    assert job["row_count"] == 2500
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    assert job["delivery"] == "email_attachment"

    (message,) = smtp_sink.for_export(export_id)
    assert message["To"] == owner.email
    assert "2,500 rows" in message["Subject"]
    (part,) = list(message.iter_attachments())
    assert part.get_filename() == f"memberships-{utcnow():%Y-%m-%d}.csv"
    assert part.get_content_type() == "text/csv"
    body, html = message.get_body(("plain",)), message.get_body(("html",))
    assert body is not None and "export of your memberships" in body.get_content()
    assert html is not None and "2,500 (plus one header row)" in html.get_content()

    rows = attachment_rows(message)
    assert rows[0] == list(EXPORT_HEADER)
    assert rows[1:] == await expected_rows(pg, owner.user_id)
    assert job["byte_size"] == len(part.get_payload(decode=True))


async def test_export_of_a_user_without_memberships_is_header_only(
    resources: Resources, make_user: MakeUser, run_worker: RunWorker, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))

    await run_worker()

    finished = await resources.jobs.get(job.job_id)
    assert finished is not None and finished.status is JobState.SUCCEEDED
    assert finished.row_count == 0
    (message,) = smtp_sink.for_export(job.job_id)
    assert attachment_rows(message) == [list(EXPORT_HEADER)]


async def test_redelivered_finished_job_sends_no_second_email(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 10)
    job = await new_job(resources, user.user_id)
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()

    first = await run_export(resources, payload, attempt=1, max_attempts=3)
    again = await run_export(resources, payload, attempt=1, max_attempts=3)

    assert first is not None and first.status is JobState.SUCCEEDED
    assert again is not None and again.status is JobState.SUCCEEDED
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_job_left_in_progress_by_a_dead_worker_is_run_again(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 5)
    job = await new_job(resources, user.user_id)
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())

    outcome = await deliver(resources, job.job_id, user.user_id, attempt=2)

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    assert outcome.row_count == 5
    assert len(smtp_sink.for_export(job.job_id)) == 1


@pytest.mark.parametrize(
    ("payload_change", "code"),
    [({"v": 99}, "unsupported_message_version"), ({"user_id": 7}, "bad_message")],
)
async def test_unreadable_message_fails_its_record_instead_of_crashing(
    resources: Resources, make_user: MakeUser, payload_change: dict[str, Any], code: str
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    payload = {**ExportMessageV1(job.job_id, user.user_id).to_payload(), **payload_change}

    await run_export(resources, payload, attempt=1, max_attempts=3)

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == code


async def test_worker_survives_a_message_with_a_future_version(
    resources: Resources, make_user: MakeUser, run_worker: RunWorker
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    await resources.queue.redis.enqueue_job(
        "run_export",
        {"v": 2, "export_id": job.job_id, "user_id": user.user_id, "new_field": True},
        _job_id=job.job_id,
        _queue_name=resources.settings.redis.queue_name,
    )

    worker = await run_worker()

    assert worker.jobs_complete == 1 and worker.jobs_retried == 0
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.error_code == "unsupported_message_version"


async def test_message_for_another_users_job_is_refused(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    owner, intruder = await make_user(), await make_user()
    await seed_rows(owner.user_id, 3)
    job = await new_job(resources, owner.user_id)

    await deliver(resources, job.job_id, intruder.user_id, attempt=1)

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert smtp_sink.for_export(job.job_id) == []


async def test_export_for_a_deleted_user_fails_without_email(
    resources: Resources, smtp_sink: SmtpSink
) -> None:
    job = await new_job(resources, "00000000-0000-4000-8000-000000000000")

    await deliver(resources, job.job_id, job.user_id, attempt=1)

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "user_unavailable"
    assert smtp_sink.for_export(job.job_id) == []


async def test_smtp_outage_is_retried_then_recorded_as_failed(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    from exporter.dev.ports import free_port
    from exporter.mail.smtp import Mailer

    user = await make_user()
    await seed_rows(user.user_id, 5)
    job = await new_job(resources, user.user_id)
    dead_smtp = resources.settings.smtp.model_copy(update={"port": free_port(), "timeout_s": 2})
    down = dataclasses.replace(resources, mailer=Mailer(dead_smtp))
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()

    with pytest.raises(RetryLater):
        await run_export(down, payload, attempt=1, max_attempts=2)
    retried = await resources.jobs.get(job.job_id)
    assert retried is not None and retried.status is JobState.IN_PROGRESS

    await run_export(down, payload, attempt=2, max_attempts=2)
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "smtp_unavailable"
    assert failed.attempts == 2


async def test_a_delivered_export_is_counted_and_audited(
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
) -> None:
    from structlog.testing import capture_logs

    from exporter.metrics import EMAIL_SEND_DURATION, EXPORTS_FINISHED

    user = await make_user()
    await seed_rows(user.user_id, 4)
    job = await new_job(resources, user.user_id)
    succeeded = EXPORTS_FINISHED.labels("succeeded", "")
    before, emails_before = succeeded._value.get(), EMAIL_SEND_DURATION._sum.get()

    with capture_logs() as logs:
        await deliver(resources, job.job_id, user.user_id, attempt=1)

    assert succeeded._value.get() == before + 1
    assert EMAIL_SEND_DURATION._sum.get() > emails_before
    (audit,) = [e for e in logs if e["event"] == "audit.export_delivered"]
    assert audit["export_id"] == job.job_id and audit["rows"] == 4
    assert audit["delivery"] == "email_attachment"


async def test_csv_gz_export_arrives_gzipped_and_decompresses_to_the_same_rows(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
) -> None:
    import gzip

    user = await make_user()
    await seed_rows(user.user_id, 1200)
    headers = await login(client, user)
    created = await client.post("/v1/exports", json={"format": "csv.gz"}, headers=headers)
    assert created.status == 202
    export_id = (await created.json())["id"]

    await run_worker()

    (message,) = smtp_sink.for_export(export_id)
    (part,) = list(message.iter_attachments())
    assert part.get_content_type() == "application/gzip"
    assert part.get_filename() == f"memberships-{utcnow():%Y-%m-%d}.csv.gz"
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    rows = list(csv.reader(io.StringIO(gzip.decompress(payload).decode(), newline="")))
    assert rows[0] == list(EXPORT_HEADER)
    assert rows[1:] == await expected_rows(pg, user.user_id)


async def test_a_rerun_after_the_email_went_out_finishes_without_sending_again(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 6)
    job = await new_job(resources, user.user_id)
    # The previous run mailed the file, wrote the guard, and died before recording success.
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())
    await resources.jobs.mark_email_sent(
        job.job_id,
        status=JobState.IN_PROGRESS,
        now=utcnow(),
        fields={"row_count": 6, "byte_size": 999, "file_name": "memberships.csv"},
    )

    outcome = await deliver(resources, job.job_id, user.user_id, attempt=2)

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.row_count == 6 and done.byte_size == 999
    assert smtp_sink.for_export(job.job_id) == []


async def test_the_email_guard_is_written_once(resources: Resources, make_user: MakeUser) -> None:
    from exporter.errors import ConditionFailed

    user = await make_user()
    job = await new_job(resources, user.user_id)
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())
    await resources.jobs.mark_email_sent(job.job_id, status=JobState.IN_PROGRESS, now=utcnow())

    with pytest.raises(ConditionFailed):
        await resources.jobs.mark_email_sent(job.job_id, status=JobState.IN_PROGRESS, now=utcnow())


async def test_a_delivered_export_records_when_its_email_went_out(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 2)
    job = await new_job(resources, user.user_id)

    await deliver(resources, job.job_id, user.user_id)

    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.email_sent_at is not None
    assert done.finished_at is not None and done.email_sent_at <= done.finished_at


async def test_a_failed_export_sends_one_plain_failure_notice(
    resources: Resources, make_user: MakeUser, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    # A message from a future worker version: permanent, and not the user's doing.
    payload = {**ExportMessageV1(job.job_id, user.user_id).to_payload(), "v": 99}

    await run_export(resources, payload, attempt=1, max_attempts=3)
    await run_export(resources, payload, attempt=1, max_attempts=3)  # changes nothing

    (notice,) = smtp_sink.for_export(job.job_id)
    assert notice["To"] == user.email
    assert notice["Subject"] == "Your memberships export could not be completed"
    assert list(notice.iter_attachments()) == []
    body = notice.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "an internal error on our side" in text and job.job_id in text
    assert "can ask for the export" in text
    assert "unsupported" not in text  # codes and exception texts stay in our logs
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.email_sent_at is not None


async def test_a_notice_that_cannot_be_sent_leaves_the_failure_as_it_is(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    from exporter.dev.ports import free_port
    from exporter.mail.smtp import Mailer

    user = await make_user()
    job = await new_job(resources, user.user_id)
    dead_smtp = resources.settings.smtp.model_copy(update={"port": free_port(), "timeout_s": 2})
    down = dataclasses.replace(resources, mailer=Mailer(dead_smtp))
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()

    outcome = await run_export(down, payload, attempt=3, max_attempts=3)

    assert outcome is not None and outcome.status is JobState.FAILED
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.error_code == "smtp_unavailable"
    assert failed.email_sent_at is None


async def test_transient_errors_stop_retrying_once_the_time_budget_is_spent(
    resources: Resources, make_user: MakeUser
) -> None:
    from datetime import timedelta

    from exporter.dev.ports import free_port
    from exporter.mail.smtp import Mailer

    user = await make_user()
    job = ExportJob.new(
        user_id=user.user_id,
        fmt=ExportFormat.CSV,
        now=utcnow() - timedelta(hours=1),
        retention_s=7200,
    )
    await resources.jobs.create(job)
    dead_smtp = resources.settings.smtp.model_copy(update={"port": free_port(), "timeout_s": 2})
    budget = resources.settings.model_copy(
        update={"worker": resources.settings.worker.model_copy(update={"retry_budget_s": 600})}
    )
    down = dataclasses.replace(resources, mailer=Mailer(dead_smtp), settings=budget)

    outcome = await run_export(
        down, ExportMessageV1(job.job_id, user.user_id).to_payload(), attempt=1, max_attempts=5
    )

    assert outcome is not None and outcome.status is JobState.FAILED


# --- progress and heartbeat while a real export runs -----------------------------------------


def with_exports(resources: Resources, **changes: Any) -> Resources:
    """``resources`` with some export settings changed (e.g. a fast heartbeat)."""
    exports = resources.settings.exports.model_copy(update=changes)
    return dataclasses.replace(
        resources, settings=resources.settings.model_copy(update={"exports": exports})
    )


@asynccontextmanager
async def organizations_locked(pg_dsn: str) -> AsyncIterator[None]:
    """Hold an exclusive lock on ``organizations``: an export counts its rows (memberships
    only) and then its COPY waits, streaming nothing, until the lock is released."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def record_when(
    resources: Resources, job_id: str, check: Callable[[ExportJob], bool]
) -> ExportJob:
    """Poll the job record until ``check`` holds (the test's timeout bounds the wait)."""
    while True:
        job = await resources.jobs.get(job_id)
        assert job is not None
        if check(job):
            return job
        await asyncio.sleep(0.01)


async def test_a_running_export_shows_progress_and_heartbeats_while_stalled(
    client: TestClient[Any, Any],
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg_dsn: str,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 120)
    job = await new_job(resources, user.user_id)
    headers = await login(client, user)
    fast = with_exports(resources, progress_interval_s=0.02)

    async with organizations_locked(pg_dsn):
        run = asyncio.create_task(deliver(fast, job.job_id, user.user_id))
        first = await record_when(resources, job.job_id, lambda j: j.total_rows is not None)
        beat = first.heartbeat_at
        assert beat is not None
        # Rows cannot advance while the COPY waits; the heartbeat keeps being written.
        later = await record_when(
            resources, job.job_id, lambda j: j.heartbeat_at is not None and j.heartbeat_at > beat
        )
        shown = await (await client.get(f"/v1/exports/{job.job_id}", headers=headers)).json()
        assert not run.done()

    outcome = await asyncio.wait_for(run, 30)
    assert (first.status, first.rows_exported, first.total_rows) == (JobState.IN_PROGRESS, 0, 120)
    assert later.rows_exported == 0 and later.status is JobState.IN_PROGRESS
    assert shown["status"] == "in_progress"
    assert (shown["rows_exported"], shown["total_rows"], shown["progress"]) == (0, 120, 0.0)
    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    done = await resources.jobs.get(job.job_id)
    assert done is not None
    assert (done.row_count, done.rows_exported, done.total_rows, done.progress) == (
        120,
        120,
        120,
        1.0,
    )
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_run_taken_over_by_a_newer_attempt_stops_and_only_the_newer_one_delivers(
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg_dsn: str,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 30)
    job = await new_job(resources, user.user_id)
    fast = with_exports(resources, progress_interval_s=0.02)

    async with organizations_locked(pg_dsn):
        old = asyncio.create_task(deliver(fast, job.job_id, user.user_id, attempt=1))
        await record_when(resources, job.job_id, lambda j: j.total_rows is not None)
        # A re-delivery (say, after the sweeper judged the old worker dead) takes over.
        new = asyncio.create_task(deliver(fast, job.job_id, user.user_id, attempt=2))
        await record_when(
            resources, job.job_id, lambda j: j.attempts == 2 and j.total_rows is not None
        )
        # The old run's next heartbeat is refused: it stops although its COPY is stalled.
        assert await asyncio.wait_for(old, 30) is None
        assert not new.done()

    outcome = await asyncio.wait_for(new, 30)
    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    assert outcome.row_count == 30
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_cancelled_run_stops_without_email(
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg_dsn: str,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 30)
    job = await new_job(resources, user.user_id)
    fast = with_exports(resources, progress_interval_s=0.02)

    async with organizations_locked(pg_dsn):
        run = asyncio.create_task(deliver(fast, job.job_id, user.user_id))
        await record_when(resources, job.job_id, lambda j: j.total_rows is not None)
        await resources.jobs.transition(
            job.job_id, to=JobState.CANCELLED, expected=(JobState.IN_PROGRESS,), now=utcnow()
        )
        assert await asyncio.wait_for(run, 30) is None

    cancelled = await resources.jobs.get(job.job_id)
    assert cancelled is not None and cancelled.status is JobState.CANCELLED
    assert smtp_sink.for_export(job.job_id) == []


def open_files_under(folder: Path) -> list[str]:
    """Files this process holds open inside ``folder`` (unlinked temp files included)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(folder)):
                found.append(target)
    return found


class TakeoverJobStore(JobStore):
    """The real store, with a newer attempt taking the job over (a real, competing write)
    just before the running export's first mid-stream progress write."""

    def __init__(self, base: JobStore, temp_dir: Path) -> None:
        self.__dict__.update(base.__dict__)
        self.temp_dir = temp_dir
        self.open_mid_stream: list[str] = []

    async def record_progress(
        self,
        job_id: str,
        *,
        attempt: int,
        rows_exported: int,
        total_rows: int | None,
        now: datetime,
    ) -> None:
        if rows_exported > 0 and not self.open_mid_stream:
            self.open_mid_stream = open_files_under(self.temp_dir)
            await self.transition(
                job_id, to=JobState.IN_PROGRESS, now=utcnow(), increment_attempts=True
            )
        await super().record_progress(
            job_id, attempt=attempt, rows_exported=rows_exported, total_rows=total_rows, now=now
        )


async def test_a_run_superseded_mid_stream_discards_its_temp_file(
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 30_000)
    job = await new_job(resources, user.user_id)
    store = TakeoverJobStore(resources.jobs, tmp_path)
    spooling = with_exports(
        resources, progress_interval_s=0.001, spool_max_bytes=1024, temp_dir=tmp_path
    )

    outcome = await deliver(dataclasses.replace(spooling, jobs=store), job.job_id, user.user_id)

    assert outcome is None
    assert store.open_mid_stream, "the export finished before a mid-stream progress write"
    assert open_files_under(tmp_path) == []
    taken = await resources.jobs.get(job.job_id)
    assert taken is not None and taken.attempts == 2 and taken.status is JobState.IN_PROGRESS
    assert smtp_sink.for_export(job.job_id) == []


class SlowOutbox(OutboxHandler):
    """An SMTP relay that takes its time over each message, like a congested one."""

    def __init__(self, outbox: Path, delay_s: float) -> None:
        super().__init__(outbox)
        self.delay_s = delay_s
        self.data_started: list[datetime] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.data_started.append(utcnow())
        await asyncio.sleep(self.delay_s)
        return await super().handle_DATA(server, session, envelope)


async def test_the_heartbeat_goes_on_while_the_email_is_sent(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, tmp_path: Path
) -> None:
    from aiosmtpd.controller import Controller

    from exporter.dev.ports import free_port
    from exporter.mail.smtp import Mailer

    user = await make_user()
    await seed_rows(user.user_id, 5)
    job = await new_job(resources, user.user_id)
    handler = SlowOutbox(tmp_path / "outbox", delay_s=0.5)
    relay = Controller(handler, hostname="127.0.0.1", port=free_port())
    relay.start()
    try:
        smtp = resources.settings.smtp.model_copy(update={"port": relay.port})
        slow = dataclasses.replace(
            with_exports(resources, progress_interval_s=0.02), mailer=Mailer(smtp)
        )
        outcome = await deliver(slow, job.job_id, user.user_id)
    finally:
        relay.stop()

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    done = await resources.jobs.get(job.job_id)
    (data_started,) = handler.data_started
    assert done is not None and done.heartbeat_at is not None
    assert done.heartbeat_at > data_started


async def test_with_a_replica_configured_the_export_reads_the_replica_only(
    settings: Settings,
    make_user: MakeUser,
    seed_rows: SeedRows,
    replica_dsn: str,
    smtp_sink: SmtpSink,
) -> None:
    # The replica holds different rows for the same user than the primary, so the email
    # shows where the export read from.
    user = await make_user()
    await seed_rows(user.user_id, 3)
    replica = await asyncpg.connect(replica_dsn)
    try:
        await seed_memberships(replica, user.user_id, 5)
        expected = await expected_rows(replica, user.user_id)
    finally:
        await replica.close()
    with_replica = settings.model_copy(
        update={
            "postgres": settings.postgres.model_copy(update={"replica_dsn": SecretStr(replica_dsn)})
        }
    )

    async with open_resources(with_replica) as resources:
        assert resources.pg_export is not resources.pg
        job = await new_job(resources, user.user_id)
        outcome = await deliver(resources, job.job_id, user.user_id)
    async with open_resources(with_replica, export_reads=False) as api_side:
        assert api_side.pg_export is api_side.pg  # the API never connects to the replica

    assert outcome is not None and outcome.row_count == 5
    (message,) = smtp_sink.for_export(job.job_id)
    assert attachment_rows(message)[1:] == expected
