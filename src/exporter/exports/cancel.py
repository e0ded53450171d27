"""Cancelling an export: one code path for its owner (DELETE /v1/exports/{id}) and operators
(``exporter jobs cancel``), and one for a scheduler later.

The record moves first, with a conditional update (queued or in_progress -> cancelled), and
only then is arq asked to abort the job. Once the record is final no worker can finish it:
a worker that takes the message finds it terminal and does nothing, and every later
transition of a running one is conditional on ``in_progress``, so it loses. The abort is
what stops a running worker early (it gets ``asyncio.CancelledError`` at its next await and
removes its temporary file on the way out). The one window left: an email the SMTP server
accepted just before the abort reached the worker; the record still says cancelled.

Counting: the API counts its owners' cancellations in its own metrics (it is scraped). An
operator's ``exporter jobs cancel`` runs in a process that exits before any scrape, so it
counts in Redis instead, where the API and workers read the count back with the queue
gauges (``exporter_operator_cancellations_total``).

A file already uploaded to S3 (``file_key`` on the record, written before the upload
starts) is deleted right after the abort, not left for the hourly expiry cron. A worker
may still be uploading to that key at that moment: its multipart upload is aborted when the
abort reaches it, and an upload that completes after this delete is removed by the run
itself once it finds the record cancelled (the worker's run). The key stays on the record,
so the expiry cron deletes it once more in case both were cut short (a ``kill -9``).
"""

from __future__ import annotations

import structlog

from exporter.errors import (
    ConditionFailed,
    ExportNotFound,
    ExportRefused,
    QueueUnavailable,
    StoreError,
)
from exporter.exports.lifecycle import CANCELLED_BY_OPERATOR, CANCELLED_BY_USER, mark_cancelled
from exporter.metrics import observe_export_finished
from exporter.models import ExportJob, JobState
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.exports.cancel")


class AlreadyFinished(ExportRefused):
    """The export reached a final state before the cancel; ``job`` is how it ended. (Here,
    not in ``errors.py``: it carries a model, and models already import the error tree.)"""

    def __init__(self, job: ExportJob) -> None:
        super().__init__(f"export {job.job_id} is already {job.status.value}")
        self.job = job


async def cancel_export(
    resources: Resources, job: ExportJob, *, by_operator: bool = False
) -> ExportJob:
    """Cancel a queued or running export and abort its arq job; the record as it is now.

    Raises ``AlreadyFinished`` when the export is (or meanwhile became) final, and
    ``ExportNotFound`` when its record disappeared meanwhile (retention ended).
    """
    if job.status.is_terminal:
        raise AlreadyFinished(job)
    reason = CANCELLED_BY_OPERATOR if by_operator else CANCELLED_BY_USER
    try:
        cancelled = await mark_cancelled(resources.jobs, job.job_id, by_operator=by_operator)
    except ConditionFailed:
        # A worker finished it (or someone else cancelled it) in the meantime.
        current = await resources.jobs.get(job.job_id)
        if current is None:
            raise ExportNotFound(job.job_id) from None
        raise AlreadyFinished(current) from None
    if by_operator:
        try:
            await resources.queue.count_operator_cancellation()
        except QueueUnavailable as exc:
            # The record says what happened; only the metric misses this one.
            log.warning("export.cancel_uncounted", export_id=job.job_id, error=str(exc))
    else:
        observe_export_finished(JobState.CANCELLED.value, reason)
    log.info("export.cancelled", export_id=job.job_id, reason=reason, was=job.status.value)
    try:
        await resources.queue.abort_export(job.job_id)
    except QueueUnavailable as exc:
        # The record is final already, so no worker can finish the export; without the
        # abort a running one only stops later, when it next writes the record.
        log.warning("export.abort_failed", export_id=job.job_id, error=str(exc))
    if cancelled.file_key is not None:
        # After the abort, so a worker mid-upload is being stopped while the object goes.
        await _delete_file(resources, cancelled, cancelled.file_key)
    return cancelled


async def _delete_file(resources: Resources, job: ExportJob, key: str) -> None:
    export_id = job.job_id
    try:
        # The bucket of the region that stored it (two regions: maybe not this one).
        await resources.files_for(job).delete(key)
    except StoreError as exc:
        # The export is cancelled either way; the expiry cron finds the key and retries.
        log.warning("export.file_delete_failed", export_id=export_id, key=key, error=str(exc))
        return
    log.info("export.file_deleted", export_id=export_id, key=key)
