"""A monthly export schedule and the runs it keeps (no I/O here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from exporter.models import ExportFormat

# The day a monthly schedule runs on: 1..28 (every month has them) or the month's last day.
LAST_DAY: Literal["last"] = "last"
DayOfMonth = int | Literal["last"]
MONTHLY = "monthly"


class RunOutcome(StrEnum):
    """What one scheduled run did."""

    CREATED = "created"  # an export was created (its id is on the run)
    SKIPPED_ACTIVE = "skipped_active"  # the user had an export running: tried again later
    SKIPPED_QUOTA = "skipped_quota"  # the daily quota was used up: tried again later
    FAILED = "failed"  # a store or the queue was down: tried again later
    STOPPED = "stopped"  # the user is disabled or gone: the schedule was paused


class PauseReason(StrEnum):
    """Why a schedule is paused."""

    USER = "user"  # its owner paused it (API or page)
    UNSUBSCRIBED = "unsubscribed"  # the one-click link of the email
    OPERATOR = "operator"  # `exporter schedules pause`
    USER_INACTIVE = "user_inactive"  # the owner was disabled or deleted


@dataclass(frozen=True, slots=True)
class ScheduleRun:
    """One run of a schedule: which month's run (``due_at``), when it ran, what it did."""

    due_at: datetime
    ran_at: datetime
    outcome: RunOutcome
    export_id: str | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A user's monthly export.

    ``due_at`` is when the pending run is due (the chosen day, at the schedule's offset in
    the spread window, in its time zone); ``wake_at`` is when the scheduler next looks at it
    (``due_at``, or later while a run is claimed or waits for a retry). A paused schedule has
    neither: it is out of the scheduler's index.
    """

    schedule_id: str
    user_id: str
    day_of_month: DayOfMonth
    time_zone: str
    format: ExportFormat
    bom: bool
    created_at: datetime
    updated_at: datetime
    frequency: str = MONTHLY
    paused_reason: PauseReason | None = None
    due_at: datetime | None = None
    wake_at: datetime | None = None
    # Tries made for the run due at ``due_at`` (retries of skipped or failed ones).
    attempt: int = 0
    # The scheduler holding the run (a lease until ``wake_at``).
    claim_id: str | None = None
    runs: tuple[ScheduleRun, ...] = ()

    @property
    def paused(self) -> bool:
        return self.paused_reason is not None

    def replace(self, **changes: Any) -> Schedule:
        return dataclasses.replace(self, **changes)
