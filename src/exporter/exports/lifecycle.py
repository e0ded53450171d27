"""Every move of an export's record, named, with the fields it writes.

The state machine itself (which state may follow which) is ``models.ALLOWED_TRANSITIONS``;
``JobStore`` makes each move conditional. This module says what each move *means*: the
worker's run (``start_run`` ... ``mark_delivered`` / ``mark_failed``; ``mark_delivered`` is
also its delivery guard), the file it may leave in S3 (``record_file_location``,
``clear_file_location``), the crons (``mark_expired``), and the moves made outside the
worker (``mark_enqueue_failed``, ``mark_cancelled``, ``requeue_failed``). Each raises
``ConditionFailed`` when the record is not where the move expects it.

``delivered_at`` (``ExportJob.delivered_at``) is the once-only guard of a delivery; the
record stores it as ``email_sent_at``, its name from when email was the only channel.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import structlog

from exporter.metrics import observe_export_finished
from exporter.models import ACTIVE_STATES, ExportJob, JobState, utcnow
from exporter.store.jobs import JobStore

log = structlog.stdlib.get_logger("exporter.exports.lifecycle")

ENQUEUE_FAILED = "enqueue_failed"
# ``delivery`` of an export whose file is stored but no channel could hand it over.
UNDELIVERED = "undelivered"
CANCELLED_BY_USER = "cancelled_by_user"
CANCELLED_BY_OPERATOR = "cancelled_by_operator"
# Error messages are shown to the owner and kept on the record: bounded.
_MAX_ERROR_MESSAGE = 500


async def start_run(
    jobs: JobStore,
    job_id: str,
    *,
    worker_id: str | None = None,
    user_id: str | None = None,
    home_region: str | None = None,
    file_key: str | None = None,
    file_expires_at: datetime | None = None,
    file_region: str | None = None,
) -> ExportJob:
    """A run takes the job (queued, or in_progress left by a dead worker): one more attempt,
    the heartbeat starts now, and the previous run's error and progress are cleared.
    ``worker_id`` names the worker process running it (the sweeper checks that it lives).

    The start is the run's first call, so its condition also covers what a read would have
    checked: the job belongs to ``user_id`` (the message's) and, with regions, is homed in
    ``home_region`` (this one) or nowhere. A refusal is ``JobRefused`` carrying the record
    as it was (None: there is none), from which the run decides without a read.

    ``file_key`` / ``file_expires_at``: where the file this run produces will be stored,
    recorded with the start (one write, not a second one before the upload) so that whatever
    interrupts the upload, cleanup can find what arrived; ``file_region`` (two regions)
    names the region whose bucket will hold it. Each is written only where the record has
    none yet: the key is fixed by the export, and a file an earlier run stored keeps its
    key, expiry and region (this run delivers that file)."""
    now = utcnow()
    fields: dict[str, object] = {"started_at": now, "heartbeat_at": now}
    location: dict[str, object] = {}
    if file_key is not None and file_expires_at is not None:
        location = {"file_key": file_key, "file_expires_at": file_expires_at}
        if file_region is not None:
            location["file_region"] = file_region
    # ``last_error`` says why a job is *waiting*; a run that starts is no longer waiting
    # (the page would go on showing "Delayed: ..." while it runs and delivers).
    cleared = [
        "error_code",
        "error_message",
        "rows_exported",
        "total_rows",
        "next_attempt_at",
        "last_error",
    ]
    if worker_id is None:
        cleared.append("worker_id")  # a previous run's worker says nothing about this one
    else:
        fields["worker_id"] = worker_id
    return await jobs.transition(
        job_id,
        to=JobState.IN_PROGRESS,
        now=now,
        # The heartbeat starts with the run; a re-run's progress starts from nothing.
        fields=fields,
        # A stored file (``file_stored_at`` and its facts) stays: this run delivers it.
        clear=cleared,
        increment_attempts=True,
        if_absent=location,
        user_id=user_id,
        home_region=home_region,
        return_current=True,
    )


async def record_file_location(
    jobs: JobStore,
    job_id: str,
    *,
    key: str,
    expires_at: datetime,
    now: datetime | None = None,
    region: str | None = None,
) -> ExportJob:
    """Where the running export's file is stored, and until when; written before the upload
    so that whatever interrupts it (a cancel, a crash), cleanup can find what arrived.
    ``region`` (two regions) names the region whose bucket holds it."""
    fields: dict[str, object] = {"file_key": key, "file_expires_at": expires_at}
    if region is not None:
        fields["file_region"] = region
    return await jobs.transition(
        job_id,
        to=JobState.IN_PROGRESS,
        expected=(JobState.IN_PROGRESS,),
        now=now or utcnow(),
        fields=fields,
    )


async def record_file_stored(
    jobs: JobStore,
    job_id: str,
    *,
    row_count: int,
    byte_size: int,
    file_name: str,
    sha256: str,
) -> ExportJob:
    """The whole file is stored: what it holds is on the record, so a re-run after a failed
    delivery delivers this file instead of producing it again. A run writes this only when
    its delivery must be retried; a delivered file's facts ride on the guard's write."""
    return await jobs.transition(
        job_id,
        to=JobState.IN_PROGRESS,
        expected=(JobState.IN_PROGRESS,),
        now=utcnow(),
        fields=stored_file_fields(
            row_count=row_count, byte_size=byte_size, file_name=file_name, sha256=sha256
        ),
    )


def stored_file_fields(
    *,
    row_count: int,
    byte_size: int,
    file_name: str,
    sha256: str,
    stored_at: datetime | None = None,
) -> dict[str, object]:
    """What ``record_file_stored`` writes, for a move that carries it instead."""
    return {
        "file_stored_at": stored_at or utcnow(),
        "row_count": row_count,
        "byte_size": byte_size,
        "file_name": file_name,
        "sha256": sha256,
    }


async def record_retry(
    jobs: JobStore, job: ExportJob, *, next_attempt_at: datetime, message: str
) -> ExportJob:
    """The run hit a transient failure and tries again at ``next_attempt_at``: the owner
    sees when and why (``last_error``). The heartbeat moves to the next try, so the sweeper
    waits for it before it calls the job lost."""
    return await jobs.transition(
        job.job_id,
        to=JobState.IN_PROGRESS,
        expected=(JobState.IN_PROGRESS,),
        now=utcnow(),
        fields={
            "next_attempt_at": next_attempt_at,
            "heartbeat_at": next_attempt_at,
            "last_error": message[:_MAX_ERROR_MESSAGE],
            "retries": job.retries + 1,
        },
    )


async def record_notice_pending(
    jobs: JobStore, job_id: str, *, next_attempt_at: datetime
) -> ExportJob:
    """The failure notice could not be sent yet; it is tried again at ``next_attempt_at``."""
    return await jobs.transition(
        job_id,
        to=JobState.FAILED,
        expected=(JobState.FAILED,),
        now=utcnow(),
        fields={"notice_next_attempt_at": next_attempt_at},
    )


async def clear_file_location(jobs: JobStore, job_id: str) -> ExportJob:
    """The running export no longer offers a stored file (an earlier run's was deleted)."""
    return await jobs.transition(
        job_id,
        to=JobState.IN_PROGRESS,
        expected=(JobState.IN_PROGRESS,),
        now=utcnow(),
        clear=("file_key", "file_expires_at"),
    )


async def mark_delivered(
    jobs: JobStore,
    job_id: str,
    *,
    attempt: int,
    row_count: int,
    byte_size: int,
    file_name: str,
    delivery: str,
    sha256: str | None = None,
    file_stored_at: datetime | None = None,
) -> ExportJob:
    """The guard and the success in one write, made the moment the channel's receiver
    accepted the file: ``succeeded`` with ``delivered_at`` (once only), ``finished_at``,
    what was delivered and how, and, when this run stored the file (``file_stored_at``),
    what ``record_file_stored`` would have written. Only while the job is ``in_progress``
    for this run's ``attempt`` and nothing was delivered yet: a cancelled export, one taken
    over by a newer attempt or delivered by another run is never recorded as this one's."""
    now = utcnow()
    return await jobs.transition(
        job_id,
        to=JobState.SUCCEEDED,
        expected=(JobState.IN_PROGRESS,),
        now=now,
        fields=_drop_none(
            {
                "email_sent_at": now,
                "finished_at": now,
                "row_count": row_count,
                "byte_size": byte_size,
                "file_name": file_name,
                "delivery": delivery,
                "rows_exported": row_count,
                "sha256": sha256,
                "file_stored_at": file_stored_at,
            }
        ),
        unsent_only=True,
        attempt=attempt,
    )


async def record_notice_sent(jobs: JobStore, job_id: str) -> ExportJob:
    """The failure notice of a failed export went out (the same once-only guard)."""
    return await jobs.mark_email_sent(job_id, status=JobState.FAILED, now=utcnow())


async def mark_delivery_failed(
    jobs: JobStore,
    job_id: str,
    *,
    row_count: int,
    code: str,
    message: str,
    stored: dict[str, object] | None = None,
) -> ExportJob:
    """The file is stored but its channel refused it for good: ``succeeded`` (the owner
    downloads it from the page or the API) with why it was not delivered. Not once a
    delivery was recorded (that one was delivered). ``stored``: what the file holds, when
    this run stored it (``stored_file_fields``) and it is not on the record yet."""
    now = utcnow()
    return await jobs.transition(
        job_id,
        to=JobState.SUCCEEDED,
        expected=(JobState.IN_PROGRESS,),
        now=now,
        fields={
            **(stored or {}),
            "finished_at": now,
            "rows_exported": row_count,
            "delivery": UNDELIVERED,
            "delivery_error_code": code,
            "delivery_error_message": message[:_MAX_ERROR_MESSAGE],
        },
        unsent_only=True,
    )


def _drop_none(fields: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in fields.items() if v is not None}


async def finish_already_sent(jobs: JobStore, job: ExportJob) -> ExportJob:
    """A run of an earlier release wrote its guard (``delivered_at``, with the row count and
    size) and died before recording success (runs now write both at once, ``mark_delivered``):
    record the success, and count it, without producing or sending anything again."""
    now = utcnow()
    job = await jobs.transition(
        job.job_id,
        to=JobState.SUCCEEDED,
        expected=(JobState.IN_PROGRESS,),
        now=now,
        # The guard write stored the row count, size, file name and delivery kind.
        fields={"finished_at": now, "rows_exported": job.row_count or 0},
    )
    observe_export_finished("succeeded", rows=job.row_count, size_bytes=job.byte_size)
    log.info("export.succeeded", rows=job.row_count, bytes=job.byte_size, resumed=True)
    return job


async def mark_failed(
    jobs: JobStore,
    job_id: str,
    *,
    code: str,
    message: str,
    expected: Collection[JobState] | None = None,
) -> ExportJob:
    """The export cannot finish: ``failed`` with a short code and message, unless its file
    was already delivered (then it succeeded: failing it would let the expiry cron delete
    the file the user was sent). ``expected`` defaults to every state ``failed`` may follow.
    """
    now = utcnow()
    return await jobs.transition(
        job_id,
        to=JobState.FAILED,
        expected=expected,
        now=now,
        fields={
            "finished_at": now,
            "error_code": code,
            "error_message": message[:_MAX_ERROR_MESSAGE],
        },
        unsent_only=True,
    )


async def mark_expired(jobs: JobStore, job_id: str, *, now: datetime) -> ExportJob:
    """A succeeded export's file time is up: ``expired``, the file's key forgotten (the
    caller deletes the object next)."""
    return await jobs.transition(
        job_id,
        to=JobState.EXPIRED,
        expected=(JobState.SUCCEEDED,),
        now=now,
        clear=("file_key",),
    )


async def mark_enqueue_failed(jobs: JobStore, job_id: str, *, message: str) -> ExportJob:
    """The record exists but its queue message could not be sent: close it (``failed``,
    ``enqueue_failed``) so it is not left queued forever. For the API's create and the
    operator's retry."""
    now = utcnow()
    return await jobs.transition(
        job_id,
        to=JobState.FAILED,
        expected=(JobState.QUEUED,),
        now=now,
        fields={"finished_at": now, "error_code": ENQUEUE_FAILED, "error_message": message},
    )


async def mark_cancelled(jobs: JobStore, job_id: str, *, by_operator: bool = False) -> ExportJob:
    """A queued or running export is cancelled; an operator's cancel also says so to the
    owner, who did not ask for it."""
    now = utcnow()
    fields: dict[str, object] = {"finished_at": now}
    if by_operator:
        fields |= {"error_code": CANCELLED_BY_OPERATOR, "error_message": "cancelled by an operator"}
    return await jobs.transition(
        job_id, to=JobState.CANCELLED, expected=ACTIVE_STATES, now=now, fields=fields
    )


async def requeue_failed(jobs: JobStore, job_id: str) -> ExportJob:
    """An operator's retry: ``failed`` back to ``queued``, the previous run's outcome
    cleared (the only move out of a final state)."""
    return await jobs.requeue_failed(job_id, now=utcnow())
