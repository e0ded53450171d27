"""The export job's run: an idempotent state machine, safe to run more than once per export.

queued ──▶ in_progress ──▶ succeeded
   │            │
   ├────────────┴──────▶ failed      (+ a failure notice to the user, best effort)
   └────────────┴──────▶ cancelled   (by the owner or an operator: exporter.cancellation)

A run starts with one conditional write, its first call (the message names the file, so
nothing need be read first): a re-delivered message finds the record terminal and does
nothing, or finds it ``in_progress`` (the previous worker died) and starts over from the
beginning; the conditional transitions (``exports/lifecycle.py``) make sure only one run
can finish the record. A run produces the file (``jobs/produce.py``), hands it to its
delivery channel (``delivery/``) and records the receipt. While it streams and delivers, it
writes progress and its heartbeat (``jobs/progress.py``); a refused write means the job was
cancelled or taken over, and the run stops there. ``delivered_at``, written with a
condition the moment the channel's receiver accepted the file, in the same write as the
success, keeps a re-run from delivering it twice (docs/reliability.md: the one window).

Transient failures raise ``RetryLater`` with exponential backoff and full jitter, within
``worker.max_tries`` and ``worker.retry_budget_s``; permanent ones fail the job at once.
A cancel aborts the arq job: ``asyncio.CancelledError`` is not an ``Exception``, so it
passes every handler below untouched (no ``_fail``, no retry) and the ``with`` blocks
close, and so delete, the temporary file on the way out.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any, Literal, TypeVar

import structlog

from exporter import audit
from exporter.delivery.base import ProducedFile, Receipt
from exporter.delivery.channels import channel_for
from exporter.delivery.notice import send_failure_notice
from exporter.delivery.storage import drop_file_if_cancelled, file_location, store_file
from exporter.errors import (
    ConditionFailed,
    DeliveryFailed,
    ExportFailed,
    RetryLater,
    StoreError,
    StoreUnavailable,
)
from exporter.exports import lifecycle
from exporter.jobs.ownership import fenced_here, may_run_here
from exporter.jobs.produce import export_file_name, write_export_file
from exporter.jobs.progress import ExportProgress, ProgressWriter
from exporter.metrics import observe_export_finished
from exporter.models import ExportJob, ExportMessageV1, JobState, User, utcnow
from exporter.resources import Resources
from exporter.store.jobs import JobRefused

# The export job's logger keeps its name from before the run was split out of
# jobs/export.py: the job's summary line (``export.succeeded``) is found by it.
log = structlog.stdlib.get_logger("exporter.jobs.export")

T = TypeVar("T")


def backoff_delay(attempt: int, *, base_s: float = 2.0, cap_s: float = 60.0) -> float:
    """Exponential backoff with full jitter (AWS architecture blog), attempt counted from 1.
    The exponent stops growing long before the cap matters (a float has its limits)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt - 1, 32)))  # noqa: S311


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    export_id: str
    status: JobState
    row_count: int | None = None
    byte_size: int | None = None


class _Ownership:
    """When this run last saw a conditional write of its own succeed: its start, or a
    progress write (refused once the job is cancelled, finished or run by a newer attempt).
    Timed on the monotonic clock when the write was sent, so the moment it landed is no
    earlier than that."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._confirmed_at: float | None = None

    def confirm(self, sent_at: float) -> None:
        if self._confirmed_at is None or sent_at > self._confirmed_at:
            self._confirmed_at = sent_at

    @property
    def fresh(self) -> bool:
        """Confirmed less than the window (``exports.progress_interval_s``) ago."""
        confirmed = self._confirmed_at
        return confirmed is not None and time.monotonic() - confirmed < self._window_s


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
    ownership = _Ownership(resources.settings.exports.progress_interval_s)
    if message.file_name is None:
        # A message queued by an older release names no file: read the record first, as
        # runs did before messages carried it, and start the run in the ``try`` below.
        try:
            job = await resources.jobs.get(message.export_id)
        except StoreUnavailable as exc:
            await _retry_first_call(resources, exc, attempt, max_attempts)
            raise
        obstacle = await _obstacle(resources, message, job)
        if obstacle is not None:
            return await _not_started(
                resources, message, job, obstacle, attempt=attempt, started=started
            )
        assert job is not None
        file_name = export_file_name(job)
    else:
        # The start is the first call: its condition checks what a read would have.
        try:
            if await fenced_here(resources):
                log.info("export.other_region", fenced=True)
                return None
            job = await _start(
                resources, message, message.file_name, worker_id=worker_id, ownership=ownership
            )
        except JobRefused as exc:
            obstacle = await _obstacle(resources, message, exc.current)
            return await _not_started(
                resources, message, exc.current, obstacle, attempt=attempt, started=started
            )
        except StoreUnavailable as exc:
            await _retry_first_call(resources, exc, attempt, max_attempts)
            raise
        file_name = None
    try:
        if file_name is not None:
            job = await _start(
                resources, message, file_name, worker_id=worker_id, ownership=ownership
            )
        return await _export(resources, job, started=started, ownership=ownership)
    except ExportFailed as exc:
        # Transient trouble (an outage of the mail service, S3, DynamoDB, the database) is
        # waited out for as long as the retry budget allows, whatever the number of tries.
        if exc.transient:
            await _retry_within_budget(resources, job, exc, attempt)
        return await _fail(resources, job.job_id, exc, started=started, attempt=attempt)
    except StoreUnavailable as exc:
        await _retry_within_budget(resources, job, exc, attempt)
        return await _fail(
            resources,
            job.job_id,
            ExportFailed("store_unavailable", str(exc)),
            started=started,
            attempt=attempt,
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


async def _retry_first_call(
    resources: Resources, exc: StoreUnavailable, attempt: int, max_attempts: int
) -> None:
    """DynamoDB throttled or away at the run's first call (its start, or the read of an
    older message), before anything is known of the job (not even when it was asked for,
    which the retry budget counts from): back off like any other transient failure, within
    max_tries (``RetryLater``); after that the caller re-raises and the sweeper finds it."""
    if attempt < max_attempts:
        await _retry_within_budget(resources, None, exc, attempt)


# Why a message does not start its job, from the record as read or as the refused start
# returned it; checked in this order.
Obstacle = Literal["missing", "other_region", "user_mismatch", "finished"]


async def _obstacle(
    resources: Resources, message: ExportMessageV1, job: ExportJob | None
) -> Obstacle | None:
    if job is None:
        return "missing"
    if not await may_run_here(resources, job):
        return "other_region"
    if job.user_id != message.user_id:
        return "user_mismatch"
    if job.status.is_terminal:
        return "finished"
    return None


async def _not_started(
    resources: Resources,
    message: ExportMessageV1,
    job: ExportJob | None,
    obstacle: Obstacle | None,
    *,
    attempt: int,
    started: float,
) -> ExportOutcome | None:
    """What a message that does not start its job does instead."""
    if job is None:
        log.warning("export.record_missing")
        return None
    if obstacle == "other_region":
        # Two regions: another region owns it (docs/operations.md); this delivery is a no-op.
        log.info("export.other_region", home_region=job.home_region)
        return None
    if obstacle == "user_mismatch":
        return await _fail(
            resources, job.job_id, ExportFailed("bad_message", "user mismatch"), started=started
        )
    if obstacle == "finished":
        if _notice_pending(job):
            await _notify(resources, job, attempt=attempt)
        log.info("export.already_finished", status=job.status.value)
        return _outcome(job)
    # DynamoDB returns the record its condition refused, so one of the above holds; should
    # it not, the record is left as it is (the sweeper repairs a job that is stuck).
    log.warning("export.start_refused", status=job.status.value)
    return None


async def _start(
    resources: Resources,
    message: ExportMessageV1,
    file_name: str,
    *,
    worker_id: str | None,
    ownership: _Ownership,
) -> ExportJob:
    """The run's start: one conditional write that also checks the job is the message's
    user's and this region's, and records where this run will store its file (unless an
    earlier run's location is recorded: that one is kept, ``lifecycle.start_run``)."""
    key, expires_at = file_location(resources, message.export_id, file_name)
    here = resources.settings.region
    sent_at = time.monotonic()
    job = await lifecycle.start_run(
        resources.jobs,
        message.export_id,
        worker_id=worker_id,
        user_id=message.user_id,
        home_region=here,
        file_key=key,
        file_expires_at=expires_at,
        file_region=here,
    )
    ownership.confirm(sent_at)
    if file_name != export_file_name(job):
        # Not what this worker would name the file: the upload records the right key
        # (``store_file``), at the cost of a write.
        log.warning("export.file_name_mismatch", file_name=file_name)
    return job


async def _retry_within_budget(
    resources: Resources, job: ExportJob | None, exc: Exception, attempt: int
) -> None:
    """Raise ``RetryLater`` unless the next try would start past the retry budget (counted
    from the request, so a job cannot hop between transient errors for hours). Without the
    job (its record could not be read) only ``max_tries`` bounds the retries. The record
    says when the next try is and why, in words its owner can read."""
    worker = resources.settings.worker
    delay = backoff_delay(attempt, base_s=worker.retry_base_s, cap_s=worker.retry_cap_s)
    if job is not None:
        now = utcnow()
        # From the request, or from an operator's retry of the failed export.
        deadline = (job.requeued_at or job.created_at) + timedelta(seconds=worker.retry_budget_s)
        if now + timedelta(seconds=delay) > deadline:
            log.warning("export.retry_budget_spent", error=str(exc), attempt=attempt)
            return
        try:
            await lifecycle.record_retry(
                resources.jobs,
                job,
                next_attempt_at=now + timedelta(seconds=delay),
                message=waiting_message(exc, deadline),
            )
        except StoreError as store_exc:
            # Best effort: the retry is what matters; a record that moved on (cancelled)
            # makes the next try a no-op.
            log.info("export.retry_unrecorded", error=str(store_exc))
    log.warning("export.retry", error=str(exc), attempt=attempt, delay_s=round(delay, 2))
    raise RetryLater(delay) from exc


# What a transient failure means to the person waiting, by error code (never the exception).
_WAITING_FOR = {
    "smtp_unavailable": "the mail service is unavailable",
    "smtp_rejected": "the mail service asked us to slow down",
    "recipient_refused": "the mail service refused the message for now",
    "database_unavailable": "the membership database is unavailable",
    "store_unavailable": "our storage is unavailable",
}


def waiting_message(exc: Exception, deadline: datetime) -> str:
    """``last_error`` of a job waiting for its next try: what is wrong, and until when we try."""
    code = getattr(exc, "code", None)
    if isinstance(exc, StoreUnavailable):
        code = "store_unavailable"
    what = _WAITING_FOR.get(
        code if isinstance(code, str) else "", "a service we use is unavailable"
    )
    return f"{what[0].upper()}{what[1:]}; we will keep trying until {deadline:%Y-%m-%d %H:%M} UTC."


async def _export(
    resources: Resources, job: ExportJob, *, started: float, ownership: _Ownership
) -> ExportOutcome:
    """The started run: finish a delivery an earlier run made, or produce and deliver."""
    if job.delivered_at is not None:
        return await finish_already_sent(resources, job)
    # The owner (their address, and whether the account is still active) is read while the
    # file is produced: it is first needed before the file is stored.
    owner = asyncio.ensure_future(resources.users.get(job.user_id))
    try:
        return await _produce_and_deliver(
            resources, job, owner, started=started, ownership=ownership
        )
    finally:
        if not owner.done():
            owner.cancel()
        elif not owner.cancelled():
            owner.exception()  # a read whose result nobody awaited (the run failed first)


async def _active_owner(owner: Awaitable[User | None]) -> User:
    user = await owner
    if user is None or not user.active:
        raise ExportFailed("user_unavailable", "the account no longer exists or is disabled")
    return user


async def _produce_and_deliver(
    resources: Resources,
    job: ExportJob,
    owner: Awaitable[User | None],
    *,
    started: float,
    ownership: _Ownership,
) -> ExportOutcome:
    settings = resources.settings.exports
    with tempfile.SpooledTemporaryFile(
        max_size=settings.spool_max_bytes,
        dir=str(settings.temp_dir) if settings.temp_dir else None,
    ) as spool:
        # ``start_run`` wrote the heartbeat: the first progress write is due an interval
        # later, so an export that takes less than that writes none.
        progress = ExportProgress(
            _progress_writer(resources, job, ownership),
            interval_s=settings.progress_interval_s,
            beat_from=time.monotonic(),
        )
        # ConditionFailed from a progress write (the job moved on) leaves this block, so
        # the spooled file is discarded with it.
        stream_started = time.monotonic()
        produced = await _stored_file(resources, job, spool, progress)
        reused = produced is not None
        if produced is None:
            written = await write_export_file(
                resources.pg_export,
                job.user_id,
                spool,
                fmt=job.format,
                bom=job.bom,
                progress=progress,
                timeout_s=settings.copy_timeout_s,
                selection=job.selection,
                temp_dir=settings.temp_dir,
            )
            spool.seek(0)
            produced = ProducedFile(
                content=spool,
                name=export_file_name(job),
                rows=written.rows,
                byte_size=written.file_bytes,
                content_type=job.format.content_type,
                sha256=written.sha256,
            )
        streamed = time.monotonic()
        # Nothing of a disabled or deleted account's is stored or sent.
        user = await _active_owner(owner)
        guard = _RunGuard(resources, job, produced, progress, ownership)
        if not reused:
            # Every file is kept before it is delivered: downloadable until it expires,
            # from the page, the API and the email's link, whatever happens to the email;
            # and a delivery that must be retried sends this file, not a new COPY.
            job = await store_file(resources, job, produced, guard=guard)
            guard.file_stored_at = job.file_stored_at
        stored = time.monotonic()
        assert job.file_key is not None
        try:
            receipt = await channel_for(resources, job).deliver(produced, job, user, guard=guard)
        except Exception as exc:
            if guard.recorded is not None and guard.receipt is not None:
                # The receiver had accepted the file and the record says the export
                # succeeded: whatever failed after that (saying goodbye) changes nothing.
                log.warning("export.error_after_delivery", error=str(exc))
                receipt = guard.receipt
            elif isinstance(exc, DeliveryFailed) and exc.transient:
                if not reused:
                    await _record_stored(resources, job, produced)
                raise
            elif isinstance(exc, DeliveryFailed):
                # Refused for good (the mail server rejected the address): the file is
                # stored, so the export succeeded; the owner sees on the page why no email
                # came.
                return await _undelivered(
                    resources, job, produced, exc, started=started, stored_now=not reused
                )
            else:
                # The guard's refused write (cancelled meanwhile): an upload that landed
                # after the canceller deleted the object is ours to remove.
                await drop_file_if_cancelled(resources, job.job_id, job.file_key)
                raise
        except BaseException:
            # Cancelled while delivering (the abort, or the guard's refused write): an
            # upload that landed after the canceller deleted the object is ours to remove.
            await drop_file_if_cancelled(resources, job.job_id, job.file_key)
            raise
        if receipt is None:
            # A parallel run (the sweeper gave up on a slow one) delivered it meanwhile.
            assert guard.delivered_by_another is not None
            return await finish_already_sent(resources, guard.delivered_by_another)
        assert guard.recorded is not None
    return _succeeded(
        guard.recorded,
        produced,
        receipt,
        started=started,
        stream_started=stream_started,
        streamed=streamed,
        stored=stored,
        reused=reused,
    )


async def _record_stored(resources: Resources, job: ExportJob, produced: ProducedFile) -> None:
    """The delivery will be retried: put what the stored file holds on the record, so the
    next try sends it instead of producing it again (best effort: without it, the next try
    produces the file again, under the same key)."""
    try:
        await lifecycle.record_file_stored(
            resources.jobs,
            job.job_id,
            row_count=produced.rows,
            byte_size=produced.byte_size,
            file_name=produced.name,
            sha256=produced.sha256,
        )
    except StoreError as exc:
        log.info("export.file_stored_unrecorded", error=str(exc))


async def _stored_file(
    resources: Resources, job: ExportJob, spool: IO[bytes], progress: ExportProgress
) -> ProducedFile | None:
    """The file an earlier run of this export stored (its delivery failed and is being
    retried), fetched into ``spool``; None when there is none to reuse."""
    if (
        job.file_stored_at is None
        or job.file_key is None
        or job.sha256 is None
        or job.row_count is None
        or job.byte_size is None
        or job.file_name is None
    ):
        return None
    try:
        size = await progress.run(_fetch(resources, job.file_key, spool, progress, job.row_count))
    except ConditionFailed:
        raise  # the export moved on (cancelled, taken over): stop, do not produce it again
    except StoreUnavailable:
        raise  # S3 is away for now: retried like any other outage
    except StoreError as exc:
        # Gone or unreadable for good: produce it again.
        log.warning("export.stored_file_unusable", key=job.file_key, error=str(exc))
        spool.seek(0)
        spool.truncate()
        return None
    if size != job.byte_size:
        log.warning("export.stored_file_unusable", key=job.file_key, bytes=size)
        spool.seek(0)
        spool.truncate()
        return None
    spool.seek(0)
    log.info("export.stored_file_reused", key=job.file_key, bytes=size)
    return ProducedFile(
        content=spool,
        name=job.file_name,
        rows=job.row_count,
        byte_size=job.byte_size,
        content_type=job.format.content_type,
        sha256=job.sha256,
    )


async def _fetch(
    resources: Resources, key: str, spool: IO[bytes], progress: ExportProgress, rows: int
) -> int:
    await progress.start_produced(rows)  # the heartbeat runs during the download
    return await resources.files.download(key, spool)


def _succeeded(
    job: ExportJob,
    produced: ProducedFile,
    receipt: Receipt,
    *,
    started: float,
    stream_started: float,
    streamed: float,
    stored: float,
    reused: bool,
) -> ExportOutcome:
    """Count, audit and log the success the guard recorded (``job``: the record it left),
    once: a run whose guard write was refused never gets here."""
    row_count, byte_size = produced.rows, produced.byte_size
    delivered = receipt.accepted_at
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
        at=job.finished_at or utcnow(),
    )
    log.info(
        "export.succeeded",
        rows=row_count,
        bytes=byte_size,
        # stream_s: the COPY into the file (or, reused, its download from S3); store_s:
        # keeping it in S3; mail_s: the delivery.
        stream_s=round(streamed - stream_started, 3),
        store_s=round(stored - streamed, 3),
        mail_s=round(delivered - stored, 3),
        reused_file=reused,
        total_s=round(delivered - started, 3),
    )
    return ExportOutcome(job.job_id, job.status, row_count, byte_size)


class _RunGuard:
    """The ``DeliveryGuard`` a run lends its channel: heartbeat, last look (a read, unless
    the run's ownership was confirmed less than a progress interval ago), and the receipt
    recorded as the export's success (``recorded``: the record that write left)."""

    def __init__(
        self,
        resources: Resources,
        job: ExportJob,
        produced: ProducedFile,
        progress: ExportProgress,
        ownership: _Ownership,
    ) -> None:
        self._resources = resources
        self._job = job
        self._produced = produced
        self._progress = progress
        self._ownership = ownership
        self.delivered_by_another: ExportJob | None = None
        # When this run stored the file: recorded with the delivery (one write, not two).
        self.file_stored_at: datetime | None = None
        self.receipt: Receipt | None = None
        self.recorded: ExportJob | None = None

    async def keep_alive(self, work: Coroutine[Any, Any, T]) -> T:
        return await self._progress.run(work)

    async def may_deliver(self) -> bool:
        if self._ownership.fresh:
            # This run's own conditional write succeeded less than a progress interval ago.
            # A takeover needs the heartbeat quiet for three intervals, and a delivery by
            # another run needs a takeover, so only a cancel can have changed the record
            # since: its abort stops this run, and ``mark_delivered`` refuses to record a
            # cancelled export. The read is saved (docs/reliability.md, the last look).
            return True
        current = await self._resources.jobs.get(self._job.job_id)
        if current is None or current.status is not JobState.IN_PROGRESS:
            # Cancelled (or finished by a parallel run) while this run produced the file:
            # no delivery for it.
            raise ConditionFailed("the export moved on before its delivery")
        if current.delivered_at is None and current.attempts != self._job.attempts:
            # Taken over by a newer attempt (the sweeper judged this run's worker dead):
            # that run delivers; this one, stalled until now, must not send a second copy.
            raise ConditionFailed("the export was taken over by a newer attempt")
        if current.delivered_at is not None:
            self.delivered_by_another = current
            return False
        return True

    async def delivered(self, receipt: Receipt) -> None:
        # The guard and the success, one write; refused (ConditionFailed) if the export was
        # cancelled, taken over or delivered by another run meanwhile.
        self.recorded = await lifecycle.mark_delivered(
            self._resources.jobs,
            self._job.job_id,
            attempt=self._job.attempts,
            row_count=self._produced.rows,
            byte_size=self._produced.byte_size,
            file_name=receipt.file_name,
            delivery=receipt.kind,
            sha256=self._produced.sha256,
            file_stored_at=self.file_stored_at,
        )
        self.receipt = receipt


async def _undelivered(
    resources: Resources,
    job: ExportJob,
    produced: ProducedFile,
    exc: DeliveryFailed,
    *,
    started: float,
    stored_now: bool,
) -> ExportOutcome:
    """The channel refused the file for good, after it was stored: the export succeeded
    (its file is downloadable until it expires) with the reason it was not delivered."""
    # What the file holds goes on the record with it, unless an earlier run put it there.
    stored = (
        lifecycle.stored_file_fields(
            row_count=produced.rows,
            byte_size=produced.byte_size,
            file_name=produced.name,
            sha256=produced.sha256,
            stored_at=job.file_stored_at,
        )
        if stored_now
        else None
    )
    job = await lifecycle.mark_delivery_failed(
        resources.jobs,
        job.job_id,
        row_count=produced.rows,
        code=exc.code,
        message=exc.message,
        stored=stored,
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


def _progress_writer(resources: Resources, job: ExportJob, ownership: _Ownership) -> ProgressWriter:
    """Progress writes for this run only: ``job.attempts`` is the attempt that owns it, so
    each write that lands confirms the run still owns the job."""

    async def write(rows: int, total: int | None) -> None:
        sent_at = time.monotonic()
        await resources.jobs.record_progress(
            job.job_id, attempt=job.attempts, rows_exported=rows, total_rows=total, now=utcnow()
        )
        ownership.confirm(sent_at)

    return write


async def _fail(
    resources: Resources, job_id: str, exc: ExportFailed, *, started: float, attempt: int = 1
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
    await _notify(resources, job, attempt=attempt)
    return ExportOutcome(job.job_id, job.status)


def _notice_pending(job: ExportJob) -> bool:
    """A failed export whose notice is waiting for the mail service."""
    return (
        job.status is JobState.FAILED
        and job.notice_next_attempt_at is not None
        and job.delivered_at is None
    )


async def _notify(resources: Resources, job: ExportJob, *, attempt: int) -> None:
    """Send the failure notice; when the mail service cannot take it, try again later (the
    same backoff, within the retry budget counted from the failure), saying so on the job."""
    if await send_failure_notice(resources, job) != "failed":
        return
    worker = resources.settings.worker
    delay = backoff_delay(attempt, base_s=worker.retry_base_s, cap_s=worker.retry_cap_s)
    now = utcnow()
    failed_at = job.finished_at or now
    if now + timedelta(seconds=delay) > failed_at + timedelta(seconds=worker.retry_budget_s):
        log.warning("export.notice_given_up", attempt=attempt)
        return
    try:
        await lifecycle.record_notice_pending(
            resources.jobs, job.job_id, next_attempt_at=now + timedelta(seconds=delay)
        )
    except StoreError as exc:
        log.info("export.notice_retry_unrecorded", error=str(exc))
        return
    log.info("export.notice_retry", attempt=attempt, delay_s=round(delay, 2))
    raise RetryLater(delay)


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
