"""The expiry cron job removes records past retention, once per schedule across workers."""

from __future__ import annotations

import uuid
from datetime import timedelta

from exporter.config import Settings
from exporter.jobs.expire import expire_jobs
from exporter.jobs.worker import build_worker_settings
from exporter.models import ExportFormat, ExportJob, utcnow
from exporter.resources import Resources


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

    assert await expire_jobs(resources) >= 1

    assert await resources.jobs.get(old.job_id) is None
    assert await resources.jobs.get(current.job_id) == current


def test_expiry_is_a_unique_cron_job(settings: Settings) -> None:
    (cron_job,) = [
        c for c in build_worker_settings(settings)["cron_jobs"] if c.name == "expire_jobs"
    ]
    assert cron_job.name == "expire_jobs"
    assert cron_job.unique is True
    assert cron_job.minute == {settings.worker.expire_cron_minute}
