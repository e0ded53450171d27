"""Retrying a failed export: back to ``queued`` and on the queue again, as if just requested
(same id, same user). Operators do this today (``exporter jobs retry``).

The record moves first (conditional: only a ``failed`` export), then the message goes on the
queue; if the queue refuses, the record is closed again as ``enqueue_failed``.
"""

from __future__ import annotations

import uuid

from exporter.errors import ConditionFailed, NotRetryable, QueueUnavailable
from exporter.exports.lifecycle import mark_enqueue_failed, requeue_failed
from exporter.exports.message import export_message
from exporter.models import ExportJob, JobState
from exporter.resources import Resources


async def retry_export(resources: Resources, job: ExportJob) -> ExportJob:
    """Put a failed export back on the queue; the record as it is now (``queued``).

    Raises ``NotRetryable`` unless the export is failed (and stays so until it is requeued),
    ``QueueUnavailable`` when the message could not be queued (the export stays failed).
    """
    if job.status is not JobState.FAILED:
        raise NotRetryable(
            f"only failed exports can be retried; {job.job_id} is {job.status.value}"
        )
    # arq refuses a job id while it keeps the previous run's result; our record holds it.
    await resources.queue.forget_result(job.job_id)
    try:
        job = await requeue_failed(resources.jobs, job.job_id)
    except ConditionFailed:
        raise NotRetryable(f"{job.job_id} changed while retrying it; look again") from None
    message = export_message(job, request_id=f"ops-retry-{uuid.uuid4().hex}")
    try:
        await resources.queue.enqueue_export(message, large=job.large)
    except QueueUnavailable:
        await mark_enqueue_failed(
            resources.jobs, job.job_id, message="an operator's retry could not be queued"
        )
        raise
    return job
