"""The export job as the API and the operator CLI show it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

from exporter.errors import QueueUnavailable
from exporter.models import ExportJob, JobState
from exporter.queue import QueuePlace
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.exports.view")


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with ``Z``, or None."""
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def export_path(job_id: str) -> str:
    return f"/v1/exports/{job_id}"


def download_path(job_id: str) -> str:
    return f"/v1/exports/{job_id}/download"


async def queue_place(resources: Resources, job: ExportJob) -> QueuePlace | None:
    """Where a queued export waits and when it may start (None once it is not waiting, or
    when Redis cannot say: the rest of the answer does not depend on it)."""
    if job.status is not JobState.QUEUED:
        return None
    try:
        return await resources.queue.place(
            job.job_id, large=job.large, estimated_rows=job.estimated_rows
        )
    except QueueUnavailable as exc:
        log.warning("export.queue_place_unknown", export_id=job.job_id, error=str(exc))
        return None


def job_body(job: ExportJob, place: QueuePlace | None = None) -> dict[str, Any]:
    """The public JSON representation of one export (``place``: while it waits)."""
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message or ""}
    delivery_error = None
    if job.delivery_error_code is not None:
        delivery_error = {
            "code": job.delivery_error_code,
            "message": job.delivery_error_message or "",
        }
    links = {"self": export_path(job.job_id)}
    if job.file_key is not None and job.status is JobState.SUCCEEDED:
        links["download"] = download_path(job.job_id)
    return {
        "id": job.job_id,
        "status": job.status.value,
        "format": job.format.value,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
        "attempts": job.attempts,
        "row_count": job.row_count,
        # While running: rows written so far (an estimate until row_count is set), the
        # total counted when streaming started, and their ratio.
        "rows_exported": job.rows_exported,
        "total_rows": job.total_rows,
        "progress": job.progress,
        # Sized at create (what routed it to the default or the large queue), and while it
        # waits: its place in that queue and when it should start and finish (exporter.eta).
        "estimated_rows": job.estimated_rows,
        "queue_position": place.position if place is not None else None,
        "estimated_start_at": iso(place.estimate.start_at) if place is not None else None,
        "estimated_finish_at": iso(place.estimate.finish_at) if place is not None else None,
        "byte_size": job.byte_size,
        "file_name": job.file_name,
        "delivery": job.delivery,
        "bom": job.bom,
        # What was asked for, known from the start (the manifest repeats it once the file
        # exists), so a waiting or cancelled export still says what it would have held.
        "columns": list(job.selection.columns),
        "filters": job.selection.filters(),
        "time_zone": job.selection.time_zone,
        "download_expires_at": iso(job.file_expires_at),
        "download_count": job.download_count,
        "last_downloaded_at": iso(job.last_downloaded_at),
        # Waiting out an outage: when the next try is, and why, in plain words.
        "next_attempt_at": iso(job.next_attempt_at) if job.status.is_active else None,
        "last_error": job.last_error if job.status.is_active else None,
        "failure_notice": failure_notice(job),
        "manifest": manifest(job),
        "delivery_error": delivery_error,
        "error": error,
        "links": links,
    }


def failure_notice(job: ExportJob) -> str | None:
    """For a failed export: ``sent``, ``pending`` (the mail service is away; retried), or
    ``not_sent``; None otherwise."""
    if job.status is not JobState.FAILED:
        return None
    if job.delivered_at is not None:
        return "sent"
    return "pending" if job.notice_next_attempt_at is not None else "not_sent"


def manifest(job: ExportJob) -> dict[str, Any] | None:
    """What the file holds, so its owner can trust what arrived: rows, bytes, columns, the
    time zone of its timestamps, the row filters and the SHA-256 computed while it was
    written. None until the file exists."""
    if job.sha256 is None or job.row_count is None:
        return None
    return {
        "file_name": job.file_name,
        "format": job.format.value,
        "row_count": job.row_count,
        "byte_size": job.byte_size,
        "columns": list(job.selection.columns),
        "time_zone": job.selection.time_zone,
        "filters": job.selection.filters(),
        "sha256": job.sha256,
    }
