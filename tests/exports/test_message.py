"""Every export's queue message names the file it will produce (exports/message.py)."""

from __future__ import annotations

import uuid
from datetime import date

from exporter.exports.message import export_message
from exporter.jobs.produce import export_file_name
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, utcnow
from exporter.selection import PLANS, STATUSES, ExportSelection


def test_the_message_carries_the_file_name_of_the_export() -> None:
    job = ExportJob.new(
        user_id=str(uuid.uuid4()), fmt=ExportFormat.XLSX, now=utcnow(), retention_s=60
    )

    message = export_message(job, request_id="req-1")

    assert message == ExportMessageV1(
        job.job_id, job.user_id, request_id="req-1", file_name=export_file_name(job)
    )
    assert ExportMessageV1.from_payload(message.to_payload()) == message


def test_the_longest_file_name_a_selection_makes_is_a_valid_message() -> None:
    selection = ExportSelection(
        columns=("membership_id", "plan"),
        statuses=STATUSES,
        plan=max(PLANS, key=len),
        started_from=date(2026, 1, 1),
        started_to=date(2026, 12, 31),
        updated_since=date(2026, 6, 1),
        time_zone="America/Argentina/ComodRivadavia",
    )
    for fmt in ExportFormat:
        job = ExportJob.new(user_id="u", fmt=fmt, now=utcnow(), retention_s=60, selection=selection)
        message = export_message(job)
        assert ExportMessageV1.from_payload(message.to_payload()).file_name == message.file_name
