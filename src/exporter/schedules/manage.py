"""What a user (or an operator) does with schedules: create, read, change, pause, resume,
delete. Each takes ``Resources``; refusals are ``ScheduleNotFound`` / ``ScheduleLimitReached``.
Someone else's schedule is ``ScheduleNotFound``, the same as a missing one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog

from exporter.config import ScheduleSettings
from exporter.errors import ConditionFailed, ScheduleLimitReached, ScheduleNotFound
from exporter.models import ExportFormat, utcnow
from exporter.resources import Resources
from exporter.schedules.model import DayOfMonth, PauseReason, Schedule
from exporter.schedules.timing import next_due_after

log = structlog.stdlib.get_logger("exporter.schedules")


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """A monthly schedule as asked for (validated by the caller)."""

    day_of_month: DayOfMonth
    time_zone: str
    fmt: ExportFormat = ExportFormat.CSV
    bom: bool = False


def next_due(
    settings: ScheduleSettings,
    schedule_id: str,
    *,
    day: DayOfMonth,
    time_zone: str,
    after: datetime,
) -> datetime:
    """The schedule's first run after ``after``, within the configured spread window."""
    return next_due_after(
        schedule_id,
        day=day,
        time_zone=time_zone,
        after=after,
        window_start_s=settings.window_start_s,
        window_s=settings.window_s,
    )


async def create_schedule(
    resources: Resources, user_id: str, request: ScheduleRequest, *, now: datetime | None = None
) -> Schedule:
    """A new schedule of ``user_id``, its first run due on the next chosen day."""
    settings = resources.settings.schedules
    now = now or utcnow()
    schedule_id = str(uuid.uuid4())
    due = next_due(
        settings, schedule_id, day=request.day_of_month, time_zone=request.time_zone, after=now
    )
    schedule = Schedule(
        schedule_id=schedule_id,
        user_id=user_id,
        day_of_month=request.day_of_month,
        time_zone=request.time_zone,
        format=request.fmt,
        bom=request.bom,
        created_at=now,
        updated_at=now,
        due_at=due,
        wake_at=due,
    )
    try:
        await resources.schedules.create(schedule, max_per_user=settings.max_per_user)
    except ConditionFailed:
        raise ScheduleLimitReached(
            f"You can have at most {settings.max_per_user} export schedules; delete one to "
            "make another.",
            limit=settings.max_per_user,
        ) from None
    log.info("schedule.created", schedule_id=schedule_id, next_run_at=due.isoformat())
    return schedule


async def get_schedule(resources: Resources, user_id: str, schedule_id: str) -> Schedule:
    schedule = await resources.schedules.get(schedule_id)
    if schedule is None or schedule.user_id != user_id:
        raise ScheduleNotFound("No export schedule with this id.")
    return schedule


async def list_schedules(resources: Resources, user_id: str) -> list[Schedule]:
    return await resources.schedules.list_for_user(user_id)


async def change_schedule(
    resources: Resources,
    user_id: str,
    schedule_id: str,
    *,
    day_of_month: DayOfMonth | None = None,
    time_zone: str | None = None,
    fmt: ExportFormat | None = None,
    bom: bool | None = None,
    paused: bool | None = None,
    now: datetime | None = None,
) -> Schedule:
    """Change what the owner asked to change; a new day or time zone moves the next run."""
    now = now or utcnow()
    current = await get_schedule(resources, user_id, schedule_id)
    if paused is True and not current.paused:
        current = await pause_schedule(
            resources, schedule_id, reason=PauseReason.USER, user_id=user_id, now=now
        )
    changed = current.replace(
        day_of_month=current.day_of_month if day_of_month is None else day_of_month,
        time_zone=current.time_zone if time_zone is None else time_zone,
        format=current.format if fmt is None else fmt,
        bom=current.bom if bom is None else bom,
        updated_at=now,
    )
    timing_changed = (changed.day_of_month, changed.time_zone) != (
        current.day_of_month,
        current.time_zone,
    )
    if changed != current.replace(updated_at=now):
        if timing_changed and not changed.paused:
            due = next_due(
                resources.settings.schedules,
                schedule_id,
                day=changed.day_of_month,
                time_zone=changed.time_zone,
                after=now,
            )
            changed = changed.replace(due_at=due, wake_at=due)
        elif not changed.paused:
            # The pending run keeps its time; only what it will produce changes.
            changed = changed.replace(wake_at=current.wake_at or current.due_at)
        try:
            current = await resources.schedules.update_settings(changed)
        except ConditionFailed:
            raise ScheduleNotFound("No export schedule with this id.") from None
    if paused is False and current.paused:
        current = await resume_schedule(resources, schedule_id, user_id=user_id, now=now)
    return current


async def pause_schedule(
    resources: Resources,
    schedule_id: str,
    *,
    reason: PauseReason,
    user_id: str | None = None,
    now: datetime | None = None,
) -> Schedule:
    """Stop the schedule's runs until it is resumed (already paused: stays as it is)."""
    current = await resources.schedules.get(schedule_id)
    if current is None or (user_id is not None and current.user_id != user_id):
        raise ScheduleNotFound("No export schedule with this id.")
    if current.paused:
        return current
    try:
        paused = await resources.schedules.pause(
            schedule_id, reason=reason, now=now or utcnow(), user_id=user_id
        )
    except ConditionFailed:
        raise ScheduleNotFound("No export schedule with this id.") from None
    log.info("schedule.paused", schedule_id=schedule_id, reason=reason.value)
    return paused


async def resume_schedule(
    resources: Resources,
    schedule_id: str,
    *,
    user_id: str | None = None,
    now: datetime | None = None,
) -> Schedule:
    """Run the schedule again from its next chosen day (runs missed while paused are not
    made up)."""
    now = now or utcnow()
    current = await resources.schedules.get(schedule_id)
    if current is None or (user_id is not None and current.user_id != user_id):
        raise ScheduleNotFound("No export schedule with this id.")
    if not current.paused:
        return current
    due = next_due(
        resources.settings.schedules,
        schedule_id,
        day=current.day_of_month,
        time_zone=current.time_zone,
        after=now,
    )
    try:
        resumed = await resources.schedules.resume(
            schedule_id, due_at=due, now=now, user_id=user_id
        )
    except ConditionFailed:
        raise ScheduleNotFound("No export schedule with this id.") from None
    log.info("schedule.resumed", schedule_id=schedule_id, next_run_at=due.isoformat())
    return resumed


async def delete_schedule(resources: Resources, user_id: str, schedule_id: str) -> None:
    try:
        await resources.schedules.delete(schedule_id, user_id=user_id)
    except ConditionFailed:
        raise ScheduleNotFound("No export schedule with this id.") from None
    log.info("schedule.deleted", schedule_id=schedule_id)
