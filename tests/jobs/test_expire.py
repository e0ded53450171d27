"""The expiry cron job removes expired files and records past retention, once per schedule
across workers."""

from __future__ import annotations

import dataclasses
import io
import uuid
from datetime import timedelta

import pytest

from exporter.config import Settings
from exporter.errors import ConditionFailed
from exporter.jobs.expire import expire_files, expire_jobs
from exporter.jobs.worker import build_worker_settings
from exporter.models import ExportFormat, ExportJob, JobState, utcnow
from exporter.resources import Resources
from exporter.store.files import ExportFiles


async def test_expire_removes_old_records_and_keeps_current_ones(resources: Resources) -> None:
    user = str(uuid.uuid4())
    old = ExportJob.new(
        user_id=user, fmt=ExportFormat.CSV, now=utcnow() - timedelta(days=8), retention_s=7 * 86_400
    )
    current = ExportJob.new(
        user_id=user, fmt=ExportFormat.CSV, now=utcnow(), retention_s=7 * 86_400
    )
    await resources.jobs.create(old)
    await resources.jobs.create(current)

    assert (await expire_jobs(resources)).records_deleted >= 1

    assert await resources.jobs.get(old.job_id) is None
    assert await resources.jobs.get(current.job_id) == current


def test_expiry_is_a_unique_cron_job(settings: Settings) -> None:
    (cron_job,) = [
        c for c in build_worker_settings(settings)["cron_jobs"] if c.name == "expire_jobs"
    ]
    assert cron_job.name == "expire_jobs"
    assert cron_job.unique is True
    assert cron_job.minute == {settings.worker.expire_cron_minute}


async def stored_job(
    resources: Resources, status: JobState, *, file_age_days: float, retention_days: int = 7
) -> ExportJob:
    """A job in ``status`` whose file was uploaded ``file_age_days`` ago."""
    now = utcnow()
    uploaded = now - timedelta(days=file_age_days)
    job = ExportJob.new(
        user_id=str(uuid.uuid4()), fmt=ExportFormat.CSV, now=uploaded, retention_s=30 * 86_400
    )
    key = resources.files.key_for(job.job_id, "memberships.csv")
    await resources.files.upload(key, io.BytesIO(b"a\n"), size=2, content_type="text/csv")
    job = job.replace(
        status=status,
        file_key=key,
        file_name="memberships.csv",
        file_expires_at=uploaded + timedelta(days=retention_days),
    )
    await resources.jobs.create(job)
    return job


async def object_exists(resources: Resources, key: str) -> bool:
    listing = await resources.files._client.list_objects_v2(
        Bucket=resources.files.bucket, Prefix=key
    )
    return bool(listing.get("Contents"))


async def test_a_succeeded_export_past_its_file_expiry_loses_the_file_and_expires(
    resources: Resources,
) -> None:
    old = await stored_job(resources, JobState.SUCCEEDED, file_age_days=8)
    fresh = await stored_job(resources, JobState.SUCCEEDED, file_age_days=1)
    assert old.file_key is not None and fresh.file_key is not None

    report = await expire_jobs(resources)

    assert report.files_deleted >= 1
    expired = await resources.jobs.get(old.job_id)
    assert expired is not None
    assert expired.status is JobState.EXPIRED
    assert expired.file_key is None
    assert not await object_exists(resources, old.file_key)
    assert await resources.jobs.get(fresh.job_id) == fresh
    assert await object_exists(resources, fresh.file_key)


@pytest.mark.parametrize("status", [JobState.FAILED, JobState.CANCELLED])
async def test_a_file_left_by_a_failed_or_cancelled_export_is_deleted_at_once(
    resources: Resources, status: JobState
) -> None:
    job = await stored_job(resources, status, file_age_days=0)
    assert job.file_key is not None

    await expire_jobs(resources)

    after = await resources.jobs.get(job.job_id)
    assert after is not None
    assert after.status is status
    assert after.file_key is None
    assert not await object_exists(resources, job.file_key)


async def test_a_running_exports_file_is_left_alone(resources: Resources) -> None:
    job = await stored_job(resources, JobState.IN_PROGRESS, file_age_days=0)
    assert job.file_key is not None

    await expire_jobs(resources)

    assert await resources.jobs.get(job.job_id) == job
    assert await object_exists(resources, job.file_key)


async def test_a_file_is_not_taken_from_a_job_that_was_requeued_meanwhile(
    resources: Resources,
) -> None:
    # The cron listed the job as failed-with-a-file; an operator re-queued it before the
    # cron got to it, and its re-run uploads to the same key.
    job = await stored_job(resources, JobState.FAILED, file_age_days=0)
    assert job.file_key is not None
    requeued = await resources.jobs.requeue_failed(job.job_id, now=utcnow())
    assert requeued.status is JobState.QUEUED

    with pytest.raises(ConditionFailed):
        await resources.jobs.forget_file(job.job_id, job.file_key, now=utcnow())


async def test_a_file_whose_delete_failed_is_found_and_deleted_by_the_next_run(
    resources: Resources,
) -> None:
    job = await stored_job(resources, JobState.SUCCEEDED, file_age_days=8)
    assert job.file_key is not None
    # The same client aimed at a bucket that does not exist: S3 refuses the delete.
    broken_settings = resources.settings.s3.model_copy(update={"bucket": "no-such-bucket-x"})
    broken = dataclasses.replace(
        resources, files=ExportFiles(resources.files._client, broken_settings)
    )

    await expire_files(broken)

    kept = await resources.jobs.get(job.job_id)
    assert kept is not None
    assert kept.status is JobState.EXPIRED  # the download route answers 410 already
    assert kept.file_key == job.file_key  # but the record still knows the object is there
    assert await object_exists(resources, job.file_key)

    await expire_files(resources)

    gone = await resources.jobs.get(job.job_id)
    assert gone is not None and gone.file_key is None
    assert not await object_exists(resources, job.file_key)
