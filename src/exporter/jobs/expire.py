"""Cron: delete expired export files, then export records past their retention.

Files first: a succeeded export whose file's time is up loses the file and becomes
``expired`` (its download route then answers 410); a failed or cancelled export that had
uploaded a file loses it at once. Records go later (DynamoDB TTL does the same, lazily).
In AWS the bucket's lifecycle rule is the backstop for anything this misses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog

from exporter.errors import ConditionFailed, StoreError
from exporter.exports import lifecycle
from exporter.models import JobState, utcnow
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.jobs.expire")


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    files_deleted: int
    records_deleted: int


async def expire_files(resources: Resources) -> int:
    now = utcnow()
    deleted = 0
    for job in await resources.jobs.files_to_delete(now=now):
        assert job.file_key is not None
        try:
            # The record changes first, conditionally: a job that moved on meanwhile (an
            # operator re-queued it; its re-run writes the same key) keeps its object.
            if job.status is JobState.SUCCEEDED:
                await lifecycle.mark_expired(resources.jobs, job.job_id, now=now)
                detached_as = JobState.EXPIRED
            else:
                await resources.jobs.forget_file(job.job_id, job.file_key, now=now)
                detached_as = job.status
        except ConditionFailed:
            continue  # changed meanwhile; the next run sees its new state
        except StoreError as exc:
            log.warning("expire.file_failed", export_id=job.job_id, error=str(exc))
            continue
        try:
            await resources.files_for(job).delete(job.file_key)
        except StoreError as exc:
            # One bad object must not stop the rest. The record gets its key back, so the
            # next run finds the object again instead of leaving it to the lifecycle rule.
            log.warning("expire.file_failed", export_id=job.job_id, error=str(exc))
            with contextlib.suppress(ConditionFailed, StoreError):
                await resources.jobs.reattach_file(
                    job.job_id, job.file_key, status=detached_as, now=now
                )
            continue
        deleted += 1
    return deleted


async def expire_jobs(resources: Resources) -> ExpiryReport:
    files = await expire_files(resources)
    records = await resources.jobs.delete_expired(now=utcnow())
    log.info("expire.done", files_deleted=files, deleted=records)
    return ExpiryReport(files_deleted=files, records_deleted=records)
