"""The export job: an idempotent state machine, safe to run more than once for one export.

queued ──▶ in_progress ──▶ succeeded
   │            │
   ├────────────┴──────▶ failed      (+ a failure notice to the user, best effort)
   └────────────┴──────▶ cancelled   (by the owner or an operator: exporter.cancellation)

A re-delivered message finds the record terminal and does nothing, or finds it
``in_progress`` (the previous worker died) and starts over from the beginning; the
conditional transitions in ``JobStore`` make sure only one run can finish the record.
While it streams and delivers, a run writes progress and its heartbeat (``jobs/progress.py``);
a refused write means the job was cancelled or taken over, and the run stops there.
``email_sent_at``, written with a condition right after the SMTP server accepted the
message, keeps a re-run from mailing the file twice (docs/reliability.md: the one window).
A cancel aborts the arq job: ``asyncio.CancelledError`` is not an ``Exception``, so it
passes every handler below untouched (no ``_fail``, no retry) and the ``with`` blocks
close, and so delete, the temporary file on the way out.
"""

from __future__ import annotations

import functools
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import IO, Any

import asyncpg
import structlog

from exporter import audit
from exporter.csvstream import ExportEncoder
from exporter.errors import ConditionFailed, ExportFailed, StoreError, StoreUnavailable
from exporter.jobs.notice import send_failure_notice
from exporter.jobs.progress import ExportProgress, ProgressWriter
from exporter.mail.messages import (
    DownloadLink,
    ExportAttachment,
    build_export_message,
    download_url,
)
from exporter.mail.smtp import base64_wire_size
from exporter.metrics import observe_email, observe_export_finished
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, User, utcnow
from exporter.resources import Resources
from exporter.store.memberships import copy_memberships

log = structlog.stdlib.get_logger("exporter.jobs.export")

# PostgreSQL failures that a later attempt can get past (connection trouble, overload,
# serialization); everything else from the database is a bug or bad data and fails at once.
_TRANSIENT_PG = (
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.InterfaceError,
    ConnectionError,
    TimeoutError,
)
# Waiting longer than this for a pool connection means the pool is wedged, not busy (a
# worker runs fewer exports at once than the pool has connections): retry later instead.
POOL_ACQUIRE_TIMEOUT_S = 30.0


class RetryLater(Exception):
    """Ask the queue to run this job again after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"retry in {delay_s:.1f}s")
        self.delay_s = delay_s


def backoff_delay(attempt: int, *, base_s: float = 2.0, cap_s: float = 120.0) -> float:
    """Exponential backoff with full jitter (AWS architecture blog), attempt counted from 1."""
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))  # noqa: S311


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    export_id: str
    status: JobState
    row_count: int | None = None
    byte_size: int | None = None


def export_file_name(job: ExportJob) -> str:
    return f"memberships-{job.created_at:%Y-%m-%d}.{job.format.value}"


async def run_export(
    resources: Resources, payload: object, *, attempt: int, max_attempts: int
) -> ExportOutcome | None:
    """Run one delivery of an export message. Raises ``RetryLater`` for transient trouble."""
    # Pick-up: both outcomes are timed from here, so the duration histogram compares them.
    started = time.monotonic()
    try:
        message = ExportMessageV1.from_payload(payload)
    except ExportFailed as exc:
        return await _fail_unreadable(resources, payload, exc, started=started)
    structlog.contextvars.bind_contextvars(export_id=message.export_id, user_id=message.user_id)
    try:
        job = await resources.jobs.get(message.export_id)
    except StoreUnavailable as exc:
        # DynamoDB throttled or away before anything is known of the job (not even when it
        # was asked for, which the retry budget counts from): back off like any other
        # transient failure, within max_tries; after that the sweeper finds it queued.
        if attempt < max_attempts:
            _retry_within_budget(resources, None, exc, attempt)
        raise
    if job is None:
        log.warning("export.record_missing")
        return None
    if job.user_id != message.user_id:
        return await _fail(
            resources, job.job_id, ExportFailed("bad_message", "user mismatch"), started=started
        )
    if job.status.is_terminal:
        log.info("export.already_finished", status=job.status.value)
        return ExportOutcome(job.job_id, job.status, job.row_count, job.byte_size)
    try:
        return await _export(resources, job, started=started)
    except ExportFailed as exc:
        if exc.transient and attempt < max_attempts:
            _retry_within_budget(resources, job, exc, attempt)
        return await _fail(resources, job.job_id, exc, started=started)
    except StoreUnavailable as exc:
        if attempt < max_attempts:
            _retry_within_budget(resources, job, exc, attempt)
        return await _fail(
            resources, job.job_id, ExportFailed("store_unavailable", str(exc)), started=started
        )
    except ConditionFailed:
        # Someone else moved the record on (a parallel delivery finished it): nothing to do.
        log.info("export.superseded")
        return None
    except StoreError as exc:
        # A store refused for good (a missing bucket, no permission): retrying cannot help.
        return await _fail(
            resources, job.job_id, ExportFailed("storage_error", str(exc)), started=started
        )
    except Exception as exc:
        # A bug or a failure nobody classified: it would happen again, so fail now (with the
        # traceback in the log) rather than let the sweeper re-run it until it is too old.
        log.exception("export.unexpected_error")
        return await _fail(
            resources,
            job.job_id,
            ExportFailed("internal_error", type(exc).__name__),
            started=started,
        )


def _retry_within_budget(
    resources: Resources, job: ExportJob | None, exc: Exception, attempt: int
) -> None:
    """Raise ``RetryLater`` unless the next try would start past the retry budget (counted
    from the request, so a job cannot hop between transient errors for hours). Without the
    job (its record could not be read) only ``max_tries`` bounds the retries."""
    worker = resources.settings.worker
    delay = backoff_delay(attempt, base_s=worker.retry_base_s, cap_s=worker.retry_cap_s)
    if job is not None:
        elapsed = (utcnow() - job.created_at).total_seconds()
        if elapsed + delay > worker.retry_budget_s:
            log.warning("export.retry_budget_spent", error=str(exc), attempt=attempt)
            return
    log.warning("export.retry", error=str(exc), attempt=attempt, delay_s=round(delay, 2))
    raise RetryLater(delay) from exc


async def _export(resources: Resources, job: ExportJob, *, started: float) -> ExportOutcome:
    now = utcnow()
    job = await resources.jobs.transition(
        job.job_id,
        to=JobState.IN_PROGRESS,
        now=now,
        # The heartbeat starts with the run; a re-run's progress starts from nothing.
        fields={"started_at": now, "heartbeat_at": now},
        clear=("error_code", "error_message", "rows_exported", "total_rows"),
        increment_attempts=True,
    )
    if job.email_sent_at is not None:
        return await finish_already_sent(resources, job)
    user = await resources.users.get(job.user_id)
    if user is None or not user.active:
        raise ExportFailed("user_unavailable", "the account no longer exists or is disabled")
    uploaded: list[str] = []  # the S3 key, once this run has recorded it and starts uploading
    try:
        return await _produce_and_deliver(resources, job, user, started=started, uploaded=uploaded)
    except BaseException:
        # The arq abort (CancelledError) or a refused write (ConditionFailed) of a cancelled
        # export: an upload that landed after the canceller deleted the object is ours to
        # remove. A shutdown or a takeover leaves it: the record is live and the next run
        # writes the same key.
        if uploaded:
            await _drop_file_if_cancelled(resources, job.job_id, uploaded[0])
        raise


async def _produce_and_deliver(
    resources: Resources, job: ExportJob, user: User, *, started: float, uploaded: list[str]
) -> ExportOutcome:
    settings = resources.settings.exports
    with tempfile.SpooledTemporaryFile(
        max_size=settings.spool_max_bytes,
        dir=str(settings.temp_dir) if settings.temp_dir else None,
    ) as spool:
        progress = ExportProgress(
            _progress_writer(resources, job), interval_s=settings.progress_interval_s
        )
        # ConditionFailed from a progress write (the job moved on) leaves this block, so
        # the spooled file is discarded with it.
        stream_started = time.monotonic()
        written = await write_export_file(
            resources.pg_export,
            job.user_id,
            spool,
            fmt=job.format,
            bom=job.bom,
            progress=progress,
            timeout_s=settings.copy_timeout_s,
        )
        row_count, byte_size = written.rows, written.file_bytes
        streamed = time.monotonic()
        spool.seek(0)
        delivery = await _delivery(
            resources, job, user, spool, written=written, progress=progress, uploaded=uploaded
        )
        # The spool stays open until the email is sent: an attached file is read from it
        # while it goes out, never held in memory whole.
        message = delivery.message
        current = await resources.jobs.get(job.job_id)
        if current is None or current.status is not JobState.IN_PROGRESS:
            # Cancelled (or finished by a parallel run) while this run produced the file: no
            # email for it.
            raise ConditionFailed("the export moved on before its email")
        if current.email_sent_at is not None:
            # A parallel run (the sweeper gave up on a slow one) mailed it meanwhile.
            return await finish_already_sent(resources, current)
        mail_started = time.monotonic()
        accepted: list[float] = []

        async def record_sent() -> None:
            # The guard, written the moment the server accepted (before QUIT), then the outcome
            # below: a crash between the two leaves a re-run that only finishes the record. A
            # crash before this write is the one window for a second email.
            accepted.append(time.monotonic())
            await resources.jobs.mark_email_sent(
                job.job_id,
                status=JobState.IN_PROGRESS,
                now=utcnow(),
                fields={
                    "row_count": row_count,
                    "byte_size": byte_size,
                    "file_name": delivery.file_name,
                    "delivery": delivery.kind,
                },
            )

        try:
            # The heartbeat goes on while the mail goes out (a slow relay is not a dead worker).
            await progress.run(resources.mailer.send(message, on_accepted=record_sent))
        except Exception:
            if not accepted:
                observe_email(time.monotonic() - mail_started, ok=False)
            raise
    mailed = accepted[0]
    observe_email(mailed - mail_started, ok=True)
    now = utcnow()
    job = await resources.jobs.transition(
        job.job_id,
        to=JobState.SUCCEEDED,
        expected=(JobState.IN_PROGRESS,),
        now=now,
        fields={
            "finished_at": now,
            "row_count": row_count,
            "byte_size": byte_size,
            "file_name": delivery.file_name,
            "delivery": delivery.kind,
            "rows_exported": row_count,
        },
    )
    # After the conditional transition: a re-delivered run that lost the race logs nothing.
    observe_export_finished(
        "succeeded", duration_s=mailed - started, rows=row_count, size_bytes=byte_size
    )
    audit.export_delivered(
        user_id=job.user_id,
        export_id=job.job_id,
        rows=row_count,
        byte_size=byte_size,
        delivery=delivery.kind,
        requested_at=job.created_at,
        at=now,
    )
    log.info(
        "export.succeeded",
        rows=row_count,
        bytes=byte_size,
        stream_s=round(streamed - stream_started, 3),
        mail_s=round(mailed - streamed, 3),
        total_s=round(mailed - started, 3),
    )
    return ExportOutcome(job.job_id, job.status, row_count, byte_size)


# Headers, the text and HTML parts and MIME boundaries around the attachment; generous,
# so a message near the limit is never refused by SES for a few bytes.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


def encoded_message_size(file_bytes: int) -> int:
    """What an email carrying ``file_bytes`` weighs on the wire: the file's base64 lines,
    plus the rest of the message. SES counts this size."""
    return base64_wire_size(file_bytes) + MESSAGE_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class Delivery:
    message: EmailMessage
    kind: str  # "email_attachment" or "download_link"
    file_name: str


async def _delivery(
    resources: Resources,
    job: ExportJob,
    user: User,
    spool: IO[bytes],
    *,
    written: ExportFile,
    progress: ExportProgress,
    uploaded: list[str],
) -> Delivery:
    """Attach the file when the whole email stays under the limit; otherwise upload it to
    S3 (under a key fixed by the export id, so a re-run overwrites it), record where it is
    before uploading (so cleanup can always find it), and mail a link to the download
    route."""
    settings = resources.settings
    file_name = export_file_name(job)
    compose = functools.partial(
        build_export_message,
        sender=resources.mailer.sender,
        recipient=user.email,
        recipient_name=user.display_name,
        export_id=job.job_id,
    )
    if encoded_message_size(written.file_bytes) <= settings.exports.attachment_max_bytes:
        attachment = ExportAttachment(
            content=spool,
            file_name=file_name,
            row_count=written.rows,
            byte_size=written.file_bytes,
            content_type=job.format.content_type,
        )
        message = compose(attachment=attachment)
        if job.file_key is not None:
            # An earlier run of this export uploaded a file (the data shrank since): drop
            # it, so the job does not offer a download of an older snapshot.
            await resources.files.delete(job.file_key)
            await resources.jobs.transition(
                job.job_id,
                to=JobState.IN_PROGRESS,
                expected=(JobState.IN_PROGRESS,),
                now=utcnow(),
                clear=("file_key", "file_expires_at"),
            )
        return Delivery(message, "email_attachment", file_name)
    key = resources.files.key_for(job.job_id, file_name)
    now = utcnow()
    expires_at = now + timedelta(days=settings.exports.retention_days)
    # Recorded before the upload (the key is fixed by the export id): whatever interrupts
    # the upload (a cancel, a crash), the expiry cron can find and delete what arrived.
    await resources.jobs.transition(
        job.job_id,
        to=JobState.IN_PROGRESS,
        expected=(JobState.IN_PROGRESS,),
        now=now,
        fields={"file_key": key, "file_expires_at": expires_at},
    )
    uploaded.append(key)
    # The heartbeat goes on during a long upload, as during the stream.
    await progress.run(
        resources.files.upload(
            key,
            spool,
            size=written.file_bytes,
            content_type="/".join(job.format.content_type),
        )
    )
    link = DownloadLink(
        url=download_url(settings.api.public_url, job.job_id),
        expires_at=expires_at,
        file_name=file_name,
        row_count=written.rows,
        byte_size=written.file_bytes,
    )
    log.info("export.uploaded", key=key, bytes=written.file_bytes)
    return Delivery(compose(link=link), "download_link", file_name)


async def _drop_file_if_cancelled(resources: Resources, job_id: str, key: str) -> None:
    """Delete ``key`` if the export is cancelled now; best effort, the expiry cron (which
    finds the key still on the record) retries what this misses."""
    try:
        current = await resources.jobs.get(job_id)
        if current is not None and current.status is JobState.CANCELLED:
            await resources.files.delete(key)
            log.info("export.cancelled_file_deleted", key=key)
    except Exception as exc:
        # Never hide why the run stopped behind a cleanup error.
        log.warning("export.cancelled_file_not_deleted", key=key, error=str(exc))


def _progress_writer(resources: Resources, job: ExportJob) -> ProgressWriter:
    """Progress writes for this run only: ``job.attempts`` is the attempt that owns it."""

    async def write(rows: int, total: int | None) -> None:
        await resources.jobs.record_progress(
            job.job_id, attempt=job.attempts, rows_exported=rows, total_rows=total, now=utcnow()
        )

    return write


@dataclass(frozen=True, slots=True)
class ExportFile:
    rows: int
    csv_bytes: int
    file_bytes: int


async def write_export_file(
    pool: asyncpg.Pool[Any],
    user_id: str,
    out: IO[bytes],
    *,
    fmt: ExportFormat,
    bom: bool,
    progress: ExportProgress | None = None,
    timeout_s: float | None = None,
) -> ExportFile:
    """Write the user's export (CSV, optionally gzipped) to ``out``. The worker and the
    benchmark both call this, so the benchmark measures exactly what users get.

    With ``progress``, the rows are first counted in the COPY's snapshot, every chunk is
    counted on its way through, and progress writes run beside the COPY (see
    ``jobs/progress.py``); a write that raises ``ConditionFailed`` stops the COPY.
    """
    encoder = ExportEncoder(fmt, bom=bom)

    if progress is None:

        async def sink(chunk: bytes) -> None:
            out.write(encoder.encode(chunk))

    else:
        count = progress.count

        async def sink(chunk: bytes) -> None:
            count(chunk)
            out.write(encoder.encode(chunk))

    try:
        async with pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn:
            if progress is None:
                rows = await copy_memberships(conn, user_id, sink, timeout_s=timeout_s)
            else:
                rows = await progress.run(
                    copy_memberships(
                        conn, user_id, sink, on_start=progress.start, timeout_s=timeout_s
                    )
                )
    except _TRANSIENT_PG as exc:
        raise ExportFailed(
            "database_unavailable", f"database: {type(exc).__name__}", transient=True
        ) from exc
    except asyncpg.PostgresError as exc:
        raise ExportFailed("database_error", f"database: {type(exc).__name__}") from exc
    out.write(encoder.finish())
    out.flush()
    return ExportFile(rows=rows, csv_bytes=encoder.csv_bytes, file_bytes=encoder.file_bytes)


async def _fail(
    resources: Resources, job_id: str, exc: ExportFailed, *, started: float
) -> ExportOutcome | None:
    """Move the record to ``failed`` (unless the email already went out) and count it, timed
    from ``started`` (the pick-up, ``time.monotonic()``) as successes are."""
    now = utcnow()
    try:
        job = await resources.jobs.transition(
            job_id,
            to=JobState.FAILED,
            now=now,
            fields={"finished_at": now, "error_code": exc.code, "error_message": exc.message[:500]},
            unsent_only=True,
        )
    except ConditionFailed:
        # Either another run finished it, or the email already went out (a failure after
        # the server accepted it, e.g. at QUIT or in the final write): that export succeeded.
        current = await resources.jobs.get(job_id)
        if (
            current is not None
            and current.email_sent_at is not None
            and current.status is JobState.IN_PROGRESS
        ):
            return await finish_already_sent(resources, current)
        log.info("export.fail_superseded", error_code=exc.code)
        return None
    observe_export_finished("failed", exc.code, duration_s=time.monotonic() - started)
    log.warning("export.failed", error_code=exc.code, error=exc.message)
    # Only the run that made the record failed gets here, so one notice per export.
    await send_failure_notice(resources, job)
    return ExportOutcome(job.job_id, job.status)


async def finish_already_sent(resources: Resources, job: ExportJob) -> ExportOutcome:
    """A run that died after mailing the file left ``email_sent_at`` (with the row count and
    size): record the success without producing or sending anything again."""
    now = utcnow()
    job = await resources.jobs.transition(
        job.job_id,
        to=JobState.SUCCEEDED,
        expected=(JobState.IN_PROGRESS,),
        now=now,
        # The guard write stored the row count, size, file name and delivery kind.
        fields={"finished_at": now, "rows_exported": job.row_count or 0},
    )
    observe_export_finished("succeeded", rows=job.row_count, size_bytes=job.byte_size)
    log.info("export.succeeded", rows=job.row_count, bytes=job.byte_size, resumed=True)
    return ExportOutcome(job.job_id, job.status, job.row_count, job.byte_size)


async def _fail_unreadable(
    resources: Resources, payload: object, exc: ExportFailed, *, started: float
) -> ExportOutcome | None:
    """A message we cannot parse: fail its record if it names one, never crash-loop."""
    export_id: Any = payload.get("export_id") if isinstance(payload, dict) else None
    log.error("export.bad_message", error_code=exc.code, error=exc.message)
    if isinstance(export_id, str) and _is_uuid(export_id):
        try:
            return await _fail(resources, export_id, exc, started=started)
        except StoreUnavailable:
            return None
    return None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
