"""Keeping the produced file: every export's file is stored in the private bucket before any
channel delivers it, so its owner can download it (from the page, the API or the link in the
email) until it expires, whether or not the email arrives.

The key is fixed by the export id (``exports/{export_id}/{file name}``), so a re-run
overwrites instead of duplicating; it is recorded on the job before the upload starts, so
whatever interrupts the upload (a cancel, a crash) leaves a key the expiry cron and the
canceller can find. An upload that lands after a cancel deleted the object is removed here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from exporter.delivery.base import DeliveryGuard, ProducedFile
from exporter.exports import lifecycle
from exporter.models import ExportJob, JobState, utcnow
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.delivery.storage")


async def store_file(
    resources: Resources, job: ExportJob, produced: ProducedFile, *, guard: DeliveryGuard
) -> ExportJob:
    """Upload ``produced`` under the export's key; the job as it will be recorded (with
    ``file_key``, ``file_expires_at`` and ``file_stored_at``). The key is recorded before
    the upload (by ``start_run``, or here when the run did not); what the file holds is not
    written here: the run records it with the delivery's guard, or with
    ``lifecycle.record_file_stored`` when the delivery must be retried. The file is read
    from the start and left at the start."""
    key = resources.files.key_for(job.job_id, produced.name)
    now = utcnow()
    here = resources.settings.region
    # The start recorded the location unless the record named one already: an earlier run's
    # in another region (a takeover) names that region's bucket, not this one's.
    moved = here is not None and job.file_region != here
    if job.file_key != key or job.file_expires_at is None or moved:
        expires_at = now + timedelta(days=resources.settings.exports.retention_days)
        job = await lifecycle.record_file_location(
            resources.jobs,
            job.job_id,
            key=key,
            expires_at=expires_at,
            now=now,
            # Two regions: the file stays in this region's bucket; the job says which.
            region=resources.settings.region,
        )
    try:
        # The heartbeat goes on during a long upload, as during the stream.
        await guard.keep_alive(
            resources.files.upload(
                key,
                produced.content,
                size=produced.byte_size,
                content_type="/".join(produced.content_type),
            )
        )
    except BaseException:
        # The arq abort (CancelledError) or a refused write (ConditionFailed) of a cancelled
        # export: an upload that landed after the canceller deleted the object is ours to
        # remove. A shutdown or a takeover leaves it: the record is live and the next run
        # writes the same key.
        await drop_file_if_cancelled(resources, job.job_id, key)
        raise
    produced.content.seek(0)
    log.info("export.uploaded", key=key, bytes=produced.byte_size)
    return job.replace(
        file_stored_at=utcnow(),
        row_count=produced.rows,
        byte_size=produced.byte_size,
        file_name=produced.name,
        sha256=produced.sha256,
    )


def file_location(resources: Resources, job_id: str, file_name: str) -> tuple[str, datetime]:
    """Where a run of export ``job_id`` stores its file, and until when it is kept."""
    expires_at = utcnow() + timedelta(days=resources.settings.exports.retention_days)
    return resources.files.key_for(job_id, file_name), expires_at


async def drop_file_if_cancelled(resources: Resources, job_id: str, key: str) -> None:
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
