"""The public view of a schedule (what the API returns and the page shows)."""

from __future__ import annotations

from typing import Any

from exporter.exports.view import iso
from exporter.schedules.model import Schedule

SCHEDULES_PATH = "/v1/export-schedules"


def schedule_path(schedule_id: str) -> str:
    return f"{SCHEDULES_PATH}/{schedule_id}"


def schedule_body(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.schedule_id,
        "frequency": schedule.frequency,
        "day_of_month": schedule.day_of_month,
        "time_zone": schedule.time_zone,
        "format": schedule.format.value,
        "bom": schedule.bom,
        "paused": schedule.paused,
        "paused_reason": None if schedule.paused_reason is None else schedule.paused_reason.value,
        "next_run_at": None if schedule.paused else iso(schedule.due_at),
        "created_at": iso(schedule.created_at),
        "updated_at": iso(schedule.updated_at),
        "runs": [
            {
                "due_at": iso(r.due_at),
                "ran_at": iso(r.ran_at),
                "outcome": r.outcome.value,
                "export_id": r.export_id,
            }
            for r in schedule.runs
        ],
        "links": {"self": schedule_path(schedule.schedule_id)},
    }
