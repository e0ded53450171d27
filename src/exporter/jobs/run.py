"""The export job's run: an idempotent state machine, safe to run more than once per export.

queued ──▶ in_progress ──▶ succeeded
   │            │
   ├────────────┴──────▶ failed      (+ a failure notice to the user, best effort)
   └────────────┴──────▶ cancelled   (by the owner or an operator: exporter.cancellation)

A re-delivered message finds the record terminal and does nothing, or finds it
``in_progress`` (the previous worker died) and starts over from the beginning; the
conditional transitions (``exports/lifecycle.py``) make sure only one run can finish the
record. A run produces the file (``jobs/produce.py``), hands it to its delivery channel
(``delivery/``) and records the receipt. While it streams and delivers, it writes progress
and its heartbeat (``jobs/progress.py``); a refused write means the job was cancelled or
taken over, and the run stops there. ``delivered_at``, written with a condition the moment
the channel's receiver accepted the file, keeps a re-run from delivering it twice
(docs/reliability.md: the one window).

Transient failures raise ``RetryLater`` with exponential backoff and full jitter, within
``worker.max_tries`` and ``worker.retry_budget_s``; permanent ones fail the job at once.
A cancel aborts the arq job: ``asyncio.CancelledError`` is not an ``Exception``, so it
passes every handler below untouched (no ``_fail``, no retry) and the ``with`` blocks
close, and so delete, the temporary file on the way out.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from exporter import audit
from exporter.delivery.base import ProducedFile, Receipt
from exporter.delivery.channels import channel_for
from exporter.delivery.notice import send_failure_notice
from exporter.delivery.storage import drop_file_if_cancelled, store_file
from exporter.errors import (
    ConditionFailed,
    DeliveryFailed,
    ExportFailed,
    StoreError,
    StoreUnavailable,
)
from exporter.exports import lifecycle
from exporter.jobs.produce import export_file_name, write_export_file
from exporter.jobs.progress import ExportProgress, ProgressWriter
from exporter.metrics import observe_export_finished
from exporter.models import ExportJob, ExportMessageV1, JobState, User, utcnow
from exporter.resources import Resources

# The export job's logger keeps its name from before the run was split out of
# jobs/export.py: the job's summary line (``export.succeeded``) is found by it.
log = structlog.stdlib.get_logger("exporter.jobs.export")

T = TypeVar("T")


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


async def run_export(
    resources: Resources,
    payload: object,
    *,
    attempt: int,
    max_attempts: int,
    worker_id: str | None = None,
) -> ExportOutcome | None:
    """Run one delivery of an export message. Raises ``RetryLater`` for transient trouble.
    ``worker_id`` (the worker process) is recorded on the job for the recovery sweeper."""
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
        return _outcome(job)
    try:
        return await _export(resources, job, started=started, worker_id=worker_id)
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


async def _export(
    resources: Resources, job: ExportJob, *, started: float, worker_id: str | None
) -> ExportOutcome:
    job = await lifecycle.start_run(resources.jobs, job.job_id, worker_id=worker_id)
    if job.delivered_at is not None:
        return await finish_already_sent(resources, job)
    user = await resources.users.get(job.user_id)
    if user is None or not user.active:
        raise ExportFailed("user_unavailable", "the account no longer exists or is disabled")
    return await _produce_and_deliver(resources, job, user, started=started)


async def _produce_and_deliver(
    resources: Resources, job: ExportJob, user: User, *, started: float
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
        streamed = time.monotonic()
        spool.seek(0)
        produced = ProducedFile(
            content=spool,
            name=export_file_name(job),
            rows=written.rows,
            byte_size=written.file_bytes,
            content_type=job.format.content_type,
            sha256=written.sha256,
        )
        # The spool stays open until the channel has delivered: it may read the file while
        # it sends it.
        guard = _RunGuard(resources, job, produced, progress)
        # Every file is kept before it is delivered: downloadable until it expires, from
        # the page, the API and the email's link, whatever happens to the email.
        job = await store_file(resources, job, produced, guard=guard)
        assert job.file_key is not None
        try:
            receipt = await channel_for(resources, job).deliver(produced, job, user, guard=guard)
        except DeliveryFailed as exc:
            if exc.transient:
                raise
            # Refused for good (the mail server rejected the address): the file is stored,
            # so the export succeeded; the owner sees on the page why no email came.
            return await _undelivered(resources, job, produced, exc, started=started)
        except BaseException:
            # Cancelled while delivering (the abort, or the guard's refused write): an
            # upload that landed after the canceller deleted the object is ours to remove.
            await drop_file_if_cancelled(resources, job.job_id, job.file_key)
            raise
        if receipt is None:
            # A parallel run (the sweeper gave up on a slow one) delivered it meanwhile.
            assert guard.delivered_by_another is not None
            return await finish_already_sent(resources, guard.delivered_by_another)
    return await _succeeded(
        resources,
        job,
        produced,
        receipt,
        started=started,
        stream_started=stream_started,
        streamed=streamed,
    )


async def _succeeded(
    resources: Resources,
    job: ExportJob,
    produced: ProducedFile,
    receipt: Receipt,
    *,
    started: float,
    stream_started: float,
    streamed: float,
) -> ExportOutcome:
    """Record the receipt as the job's success, then count, audit and log it once."""
    row_count, byte_size = produced.rows, produced.byte_size
    delivered = receipt.accepted_at
    now = utcnow()
    job = await lifecycle.mark_succeeded(
        resources.jobs,
        job.job_id,
        row_count=row_count,
        byte_size=byte_size,
        file_name=receipt.file_name,
        delivery=receipt.kind,
        sha256=produced.sha256,
        now=now,
    )
    # After the conditional transition: a re-delivered run that lost the race logs nothing.
    observe_export_finished(
        "succeeded", duration_s=delivered - started, rows=row_count, size_bytes=byte_size
    )
    audit.export_delivered(
        user_id=job.user_id,
        export_id=job.job_id,
        rows=row_count,
        byte_size=byte_size,
        delivery=receipt.kind,
        requested_at=job.created_at,
        at=now,
    )
    log.info(
        "export.succeeded",
        rows=row_count,
        bytes=byte_size,
        stream_s=round(streamed - stream_started, 3),
        mail_s=round(delivered - streamed, 3),
        total_s=round(delivered - started, 3),
    )
    return ExportOutcome(job.job_id, job.status, row_count, byte_size)


class _RunGuard:
    """The ``DeliveryGuard`` a run lends its channel: heartbeat, last check, receipt."""

    def __init__(
        self,
        resources: Resources,
        job: ExportJob,
        produced: ProducedFile,
        progress: ExportProgress,
    ) -> None:
        self._resources = resources
        self._job = job
        self._produced = produced
        self._progress = progress
        self.delivered_by_another: ExportJob | None = None

    async def keep_alive(self, work: Coroutine[Any, Any, T]) -> T:
        return await self._progress.run(work)

    async def may_deliver(self) -> bool:
        current = await self._resources.jobs.get(self._job.job_id)
        if current is None or current.status is not JobState.IN_PROGRESS:
            # Cancelled (or finished by a parallel run) while this run produced the file:
            # no delivery for it.
            raise ConditionFailed("the export moved on before its delivery")
        if current.delivered_at is not None:
            self.delivered_by_another = current
            return False
        return True

    async def delivered(self, receipt: Receipt) -> None:
        await lifecycle.record_delivered(
            self._resources.jobs,
            self._job.job_id,
            row_count=self._produced.rows,
            byte_size=self._produced.byte_size,
            file_name=receipt.file_name,
            delivery=receipt.kind,
            sha256=self._produced.sha256,
        )


async def _undelivered(
    resources: Resources,
    job: ExportJob,
    produced: ProducedFile,
    exc: DeliveryFailed,
    *,
    started: float,
) -> ExportOutcome:
    """The channel refused the file for good, after it was stored: the export succeeded
    (its file is downloadable until it expires) with the reason it was not delivered."""
    job = await lifecycle.mark_delivery_failed(
        resources.jobs,
        job.job_id,
        row_count=produced.rows,
        byte_size=produced.byte_size,
        file_name=produced.name,
        sha256=produced.sha256,
        code=exc.code,
        message=exc.message,
    )
    observe_export_finished(
        "succeeded",
        exc.code,
        duration_s=time.monotonic() - started,
        rows=produced.rows,
        size_bytes=produced.byte_size,
    )
    log.warning("export.undelivered", error_code=exc.code, error=exc.message)
    return _outcome(job)


def _progress_writer(resources: Resources, job: ExportJob) -> ProgressWriter:
    """Progress writes for this run only: ``job.attempts`` is the attempt that owns it."""

    async def write(rows: int, total: int | None) -> None:
        await resources.jobs.record_progress(
            job.job_id, attempt=job.attempts, rows_exported=rows, total_rows=total, now=utcnow()
        )

    return write


async def _fail(
    resources: Resources, job_id: str, exc: ExportFailed, *, started: float
) -> ExportOutcome | None:
    """Move the record to ``failed`` (unless the file was already delivered) and count it,
    timed from ``started`` (the pick-up, ``time.monotonic()``) as successes are."""
    try:
        job = await lifecycle.mark_failed(
            resources.jobs, job_id, code=exc.code, message=exc.message
        )
    except ConditionFailed:
        # Either another run finished it, or the file already went out (a failure after
        # the receiver accepted it, e.g. at QUIT or in the final write): that export
        # succeeded.
        current = await resources.jobs.get(job_id)
        if (
            current is not None
            and current.delivered_at is not None
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
    """A run that died after delivering left ``delivered_at`` (with the row count and size):
    record the success without producing or sending anything again."""
    return _outcome(await lifecycle.finish_already_sent(resources.jobs, job))


def _outcome(job: ExportJob) -> ExportOutcome:
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
