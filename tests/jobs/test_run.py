"""The export job's run (jobs/run.py) on real services: its state machine, retries and
failures, the delivery guard, and progress and heartbeat while a real export runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.dev.smtp import OutboxHandler, SmtpSink
from exporter.errors import MailError, RetryLater
from exporter.exports import lifecycle
from exporter.exports.message import export_message
from exporter.exports.view import job_body
from exporter.jobs.produce import export_file_name
from exporter.jobs.run import ExportOutcome, run_export
from exporter.mail.smtp import Mailer
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.resources import Resources
from exporter.store.jobs import JobStore
from tests.conftest import MakeUser, RunWorker, SeededJob, SeedRows
from tests.helpers import (
    DynamoCalls,
    attachment_rows,
    deliver,
    login,
    new_job,
    past_its_budget,
    with_exports,
    without_smtp,
)


@pytest.mark.parametrize("names_file", [True, False], ids=["message", "older-message"])
async def test_redelivered_finished_job_sends_no_second_email(
    resources: Resources, seeded_job: SeededJob, smtp_sink: SmtpSink, names_file: bool
) -> None:
    user, job = await seeded_job(10)
    message = export_message(job) if names_file else ExportMessageV1(job.job_id, user.user_id)
    payload = message.to_payload()

    first = await run_export(resources, payload, attempt=1, max_attempts=3)
    again = await run_export(resources, payload, attempt=1, max_attempts=3)

    assert first is not None and first.status is JobState.SUCCEEDED
    assert again is not None and again.status is JobState.SUCCEEDED
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_job_left_in_progress_by_a_dead_worker_is_run_again(
    resources: Resources, seeded_job: SeededJob, smtp_sink: SmtpSink
) -> None:
    user, job = await seeded_job(5)
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())

    outcome = await deliver(resources, job, user.user_id, attempt=2)

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


@pytest.mark.parametrize("names_file", [True, False], ids=["message", "older-message"])
async def test_message_for_another_users_job_is_refused(
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    names_file: bool,
) -> None:
    owner, intruder = await make_user(), await make_user()
    await seed_rows(owner.user_id, 3)
    job = await new_job(resources, owner.user_id)

    await deliver(resources, job if names_file else job.job_id, intruder.user_id, attempt=1)

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert smtp_sink.for_export(job.job_id) == []


async def test_export_for_a_deleted_user_fails_without_email(
    resources: Resources, smtp_sink: SmtpSink
) -> None:
    job = await new_job(resources, "00000000-0000-4000-8000-000000000000")

    await deliver(resources, job, job.user_id, attempt=1)

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "user_unavailable"
    assert smtp_sink.for_export(job.job_id) == []


async def test_an_smtp_outage_is_waited_out_past_max_tries_without_a_second_copy(
    resources: Resources,
    seeded_job: SeededJob,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
) -> None:
    user, job = await seeded_job(5)
    down = without_smtp(resources)
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()

    # More tries than max_tries: an outage is bounded by the retry budget, not a count.
    for attempt in (1, 2, 3, 4):
        with pytest.raises(RetryLater):
            await run_export(down, payload, attempt=attempt, max_attempts=2)
    waiting = await resources.jobs.get(job.job_id)
    assert waiting is not None and waiting.status is JobState.IN_PROGRESS
    assert waiting.attempts == 4 and waiting.retries == 4 and waiting.error_code is None
    assert waiting.next_attempt_at is not None and waiting.next_attempt_at > utcnow()
    assert waiting.last_error is not None
    assert waiting.last_error.startswith("The mail service is unavailable; we will keep trying")
    stored_at = waiting.file_stored_at
    assert stored_at is not None and waiting.row_count == 5

    await seed_rows(user.user_id, 3)  # the data changes while the mail service is down
    outcome = await run_export(resources, payload, attempt=5, max_attempts=2)

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.file_stored_at == stored_at  # no second COPY
    (message,) = smtp_sink.for_export(job.job_id)
    assert len(attachment_rows(message)) == 1 + 5  # the file produced before the outage


async def test_a_delivered_export_is_counted_and_audited(
    resources: Resources,
    seeded_job: SeededJob,
) -> None:
    from structlog.testing import capture_logs

    from exporter.metrics import EMAIL_SEND_DURATION, EXPORTS_FINISHED

    user, job = await seeded_job(4)
    succeeded = EXPORTS_FINISHED.labels("succeeded", "")
    before, emails_before = succeeded._value.get(), EMAIL_SEND_DURATION._sum.get()

    with capture_logs() as logs:
        await deliver(resources, job, user.user_id, attempt=1)

    assert succeeded._value.get() == before + 1
    assert EMAIL_SEND_DURATION._sum.get() > emails_before
    (audit,) = [e for e in logs if e["event"] == "audit.export_delivered"]
    assert audit["export_id"] == job.job_id and audit["rows"] == 4
    assert audit["delivery"] == "email_attachment"


async def test_a_rerun_after_the_email_went_out_finishes_without_sending_again(
    resources: Resources, seeded_job: SeededJob, smtp_sink: SmtpSink
) -> None:
    user, job = await seeded_job(6)
    # The previous run mailed the file, wrote the guard, and died before recording success.
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())
    await resources.jobs.mark_email_sent(
        job.job_id,
        status=JobState.IN_PROGRESS,
        now=utcnow(),
        fields={"row_count": 6, "byte_size": 999, "file_name": "memberships.csv"},
    )

    outcome = await deliver(resources, job, user.user_id, attempt=2)

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
    resources: Resources,
    seeded_job: SeededJob,
) -> None:
    user, job = await seeded_job(2)

    await deliver(resources, job, user.user_id)

    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.email_sent_at is not None
    assert done.finished_at is not None and done.email_sent_at <= done.finished_at


async def test_transient_errors_stop_retrying_once_the_time_budget_is_spent(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    job, down = await past_its_budget(resources, user.user_id)

    # The export fails at once (its budget is spent); its notice then waits for the mail
    # service (a budget of its own, from the failure).
    with pytest.raises(RetryLater):
        await run_export(
            down, ExportMessageV1(job.job_id, user.user_id).to_payload(), attempt=1, max_attempts=5
        )

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "smtp_unavailable" and failed.attempts == 1
    assert failed.notice_next_attempt_at is not None


# --- progress and heartbeat while a real export runs -----------------------------------------


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


async def start_stalled_run(
    resources: Resources, job: ExportJob, *, attempt: int = 1
) -> tuple[asyncio.Task[ExportOutcome | None], ExportJob]:
    """Start a run with a fast heartbeat (under ``organizations_locked`` its COPY waits);
    the running task, and the record as soon as this attempt has counted the rows."""
    fast = with_exports(resources, progress_interval_s=0.02)
    run = asyncio.create_task(deliver(fast, job, job.user_id, attempt=attempt))
    counted = await record_when(
        resources, job.job_id, lambda j: j.attempts == attempt and j.total_rows is not None
    )
    return run, counted


async def test_a_running_export_shows_progress_and_heartbeats_while_stalled(
    client: TestClient[Any, Any],
    resources: Resources,
    seeded_job: SeededJob,
    smtp_sink: SmtpSink,
    pg_dsn: str,
) -> None:
    user, job = await seeded_job(120)
    headers = await login(client, user)

    async with organizations_locked(pg_dsn):
        run, first = await start_stalled_run(resources, job)
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
    seeded_job: SeededJob,
    smtp_sink: SmtpSink,
    pg_dsn: str,
) -> None:
    _, job = await seeded_job(30)

    async with organizations_locked(pg_dsn):
        old, _ = await start_stalled_run(resources, job, attempt=1)
        # A re-delivery (say, after the sweeper judged the old worker dead) takes over.
        new, _ = await start_stalled_run(resources, job, attempt=2)
        # The old run's next heartbeat is refused: it stops although its COPY is stalled.
        assert await asyncio.wait_for(old, 30) is None
        assert not new.done()

    outcome = await asyncio.wait_for(new, 30)
    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    assert outcome.row_count == 30
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_cancelled_run_stops_without_email(
    resources: Resources,
    seeded_job: SeededJob,
    smtp_sink: SmtpSink,
    pg_dsn: str,
) -> None:
    _, job = await seeded_job(30)

    async with organizations_locked(pg_dsn):
        run, _ = await start_stalled_run(resources, job)
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
    seeded_job: SeededJob,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    user, job = await seeded_job(30_000)
    store = TakeoverJobStore(resources.jobs, tmp_path)
    spooling = with_exports(
        resources, progress_interval_s=0.001, spool_max_bytes=1024, temp_dir=tmp_path
    )

    outcome = await deliver(dataclasses.replace(spooling, jobs=store), job, user.user_id)

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
    resources: Resources, seeded_job: SeededJob, tmp_path: Path
) -> None:
    from aiosmtpd.controller import Controller

    from exporter.dev.ports import free_port

    user, job = await seeded_job(5)
    handler = SlowOutbox(tmp_path / "outbox", delay_s=0.5)
    relay = Controller(handler, hostname="127.0.0.1", port=free_port())
    relay.start()
    try:
        smtp = resources.settings.smtp.model_copy(update={"port": relay.port})
        slow = dataclasses.replace(
            with_exports(resources, progress_interval_s=0.02), mailer=Mailer(smtp)
        )
        outcome = await deliver(slow, job, user.user_id)
    finally:
        relay.stop()

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    done = await resources.jobs.get(job.job_id)
    (data_started,) = handler.data_started
    assert done is not None and done.heartbeat_at is not None
    assert done.heartbeat_at > data_started


async def test_a_retry_that_starts_no_longer_says_it_is_delayed(
    resources: Resources, seeded_job: SeededJob
) -> None:
    user, job = await seeded_job(3)
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()
    with pytest.raises(RetryLater):
        await run_export(without_smtp(resources), payload, attempt=1, max_attempts=3)
    waiting = await resources.jobs.get(job.job_id)
    assert waiting is not None and waiting.last_error is not None

    # The next try starts (the mail service is back): the job runs, it is not waiting.
    running = await lifecycle.start_run(resources.jobs, job.job_id)

    assert running.next_attempt_at is None
    assert job_body(running)["last_error"] is None  # the page would say "Delayed: ..."


async def test_an_operator_retry_gets_a_fresh_retry_budget(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    job, down = await past_its_budget(resources, user.user_id)  # asked an hour ago
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()
    with pytest.raises(RetryLater):  # failed at once (budget spent); the notice waits
        await run_export(down, payload, attempt=1, max_attempts=3)
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED

    await resources.jobs.requeue_failed(job.job_id, now=utcnow())
    # The mail service is still down: the retried export waits instead of failing at once.
    with pytest.raises(RetryLater):
        await run_export(down, payload, attempt=1, max_attempts=3)

    waiting = await resources.jobs.get(job.job_id)
    assert waiting is not None and waiting.status is JobState.IN_PROGRESS
    assert waiting.next_attempt_at is not None and waiting.error_code is None


async def test_a_small_successful_run_makes_two_writes_and_one_read(
    resources: Resources, seeded_job: SeededJob, smtp_sink: SmtpSink
) -> None:
    _, job = await seeded_job(1_000)

    with DynamoCalls() as run:
        outcome = await deliver(resources, job)  # the message names the file

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    # Start (with the heartbeat and where the file goes, conditional on what the pick-up
    # read checked), and the delivery's guard, which is also the success (with what the
    # stored file holds); no progress write for a run this short. One read: the owner. No
    # last look before the email: the start confirmed the run owns the job moments ago.
    assert run.calls == {"UpdateItem": 2, "GetItem": 1}, run.calls
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.row_count == 1_000 and done.file_stored_at is not None
    assert done.file_key == resources.files.key_for(job.job_id, export_file_name(job))
    assert done.file_expires_at is not None
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_message_without_a_file_name_reads_the_record_first_and_still_runs(
    resources: Resources, seeded_job: SeededJob, smtp_sink: SmtpSink
) -> None:
    # Queued by the release before messages named the file, during a deploy.
    user, job = await seeded_job(1_000)

    with DynamoCalls() as run:
        outcome = await deliver(resources, job.job_id, user.user_id)

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    assert run.calls == {"UpdateItem": 2, "GetItem": 2}, run.calls  # the record, first
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.row_count == 1_000 and done.file_stored_at is not None
    assert done.file_key == resources.files.key_for(job.job_id, export_file_name(job))
    assert len(smtp_sink.for_export(job.job_id)) == 1


@pytest.mark.parametrize("names_file", [True, False], ids=["message", "older-message"])
async def test_a_message_for_a_missing_record_writes_nothing(
    resources: Resources, make_user: MakeUser, smtp_sink: SmtpSink, names_file: bool
) -> None:
    user = await make_user()
    ghost = ExportJob.new(user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=60)

    with DynamoCalls() as run:
        outcome = await deliver(resources, ghost if names_file else ghost.job_id, user.user_id)

    assert outcome is None
    assert run.total == 1, run.calls  # the refused start (or the read) says it is missing
    assert await resources.jobs.get(ghost.job_id) is None  # the start created nothing
    assert smtp_sink.for_export(ghost.job_id) == []


async def test_a_redelivered_finished_job_costs_one_refused_start(
    resources: Resources, seeded_job: SeededJob, smtp_sink: SmtpSink
) -> None:
    _, job = await seeded_job(3)
    first = await deliver(resources, job)
    assert first is not None and first.status is JobState.SUCCEEDED
    done = await resources.jobs.get(job.job_id)

    with DynamoCalls() as run:
        again = await deliver(resources, job)

    # The refused start returned the record: finished, so nothing more, and no read.
    assert run.calls == {"UpdateItem": 1}, run.calls
    assert again == first
    assert await resources.jobs.get(job.job_id) == done
    assert len(smtp_sink.for_export(job.job_id)) == 1


class GoodbyeFails(Mailer):
    """The real mailer, with the connection dropping after the server accepted the message
    (its ``250``), as when the goodbye fails."""

    def __init__(self, inner: Mailer) -> None:
        self._inner = inner

    @property
    def sender(self) -> str:
        return self._inner.sender

    async def send(self, message: Any, **kwargs: Any) -> None:
        await self._inner.send(message, **kwargs)
        raise MailError("smtp_unavailable", "SMTP unavailable: connection lost", transient=True)


async def test_a_failure_after_the_receiver_accepted_the_file_changes_nothing(
    resources: Resources, seeded_job: SeededJob, smtp_sink: SmtpSink
) -> None:
    from exporter.metrics import EXPORTS_FINISHED

    _, job = await seeded_job(4)
    succeeded = EXPORTS_FINISHED.labels("succeeded", "")
    before = succeeded._value.get()

    cut_off = dataclasses.replace(resources, mailer=GoodbyeFails(resources.mailer))
    outcome = await deliver(cut_off, job)

    # The guard recorded the success when the server accepted: no retry, no second email.
    assert outcome is not None and outcome.status is JobState.SUCCEEDED and outcome.row_count == 4
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED and done.retries == 0
    assert succeeded._value.get() == before + 1
    assert len(smtp_sink.for_export(job.job_id)) == 1
