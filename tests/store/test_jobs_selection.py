"""The export's format and selection on its job record (DynamoDB Local): they read back
as written, and a record from before them reads as the whole export in UTC."""

from __future__ import annotations

import uuid
from datetime import date

from exporter.models import ExportFormat, ExportJob, JobState, utcnow
from exporter.resources import Resources
from exporter.selection import ALL, ExportSelection
from exporter.store.jobs import job_to_item


def _job(fmt: ExportFormat, selection: ExportSelection = ALL) -> ExportJob:
    return ExportJob.new(
        user_id=str(uuid.uuid4()), fmt=fmt, now=utcnow(), retention_s=3600, selection=selection
    )


async def test_format_and_selection_read_back_as_written(resources: Resources) -> None:
    selection = ExportSelection(
        columns=("updated_at", "plan"),
        statuses=("active", "cancelled"),
        plan="enterprise",
        started_from=date(2024, 2, 29),
        started_to=date(2024, 12, 31),
        updated_since=date(2025, 6, 1),
        time_zone="Pacific/Chatham",
    )
    for fmt in (ExportFormat.XLSX, ExportFormat.PARQUET, ExportFormat.JSONL):
        job = _job(fmt, selection)
        await resources.jobs.create(job)
        assert await resources.jobs.get(job.job_id) == job
    # A transition rewrites no option.
    moved = await resources.jobs.transition(
        job.job_id, to=JobState.CANCELLED, expected={JobState.QUEUED}, now=utcnow()
    )
    assert moved.selection == selection and moved.format is ExportFormat.JSONL


async def test_a_record_without_a_selection_is_the_whole_export_in_utc(
    resources: Resources,
) -> None:
    job = _job(ExportFormat.CSV)
    assert "selection" not in job_to_item(job)  # what records from before issue 17 hold
    await resources.jobs.create(job)
    read = await resources.jobs.get(job.job_id)
    assert read is not None and read.selection.is_all and read.selection.time_zone == "UTC"
