"""What a scheduled export's email says about its schedule: when the next export comes, and
the link that pauses the schedule (``mail.messages.ScheduleNotice``)."""

from __future__ import annotations

import structlog

from exporter.errors import StoreError
from exporter.mail.messages import ScheduleNotice
from exporter.models import utcnow
from exporter.resources import Resources
from exporter.schedules.pause_link import pause_url
from exporter.schedules.timing import next_due_after

log = structlog.stdlib.get_logger("exporter.delivery.schedule_notice")


async def schedule_notice(
    resources: Resources, schedule_id: str, user_id: str
) -> ScheduleNotice | None:
    """The notice for an export made by ``schedule_id``. None when the schedule is gone (the
    email is then an ordinary one); without the next date when it is paused or cannot be
    read right now (the pause link needs only the ids, so it is always there)."""
    settings = resources.settings
    now = utcnow()
    link = pause_url(
        resources.tokens,
        settings.api.public_url,
        schedule_id=schedule_id,
        user_id=user_id,
        now=now,
        ttl_days=settings.schedules.pause_link_ttl_days,
    )
    try:
        schedule = await resources.schedules.get(schedule_id)
    except StoreError as exc:
        log.warning("schedule_notice.schedule_unreadable", error=str(exc))
        return ScheduleNotice(pause_url=link, time_zone="UTC")
    if schedule is None or schedule.user_id != user_id:
        return None
    if schedule.paused:
        return ScheduleNotice(pause_url=link, time_zone=schedule.time_zone)
    # The scheduler records the run (and moves due_at on) right after the create; the email
    # may be quicker, so a due time not yet in the future is recomputed from now.
    due = schedule.due_at
    if due is None or due <= now:
        due = next_due_after(
            schedule_id,
            day=schedule.day_of_month,
            time_zone=schedule.time_zone,
            after=now,
            window_start_s=settings.schedules.window_start_s,
            window_s=settings.schedules.window_s,
        )
    return ScheduleNotice(pause_url=link, time_zone=schedule.time_zone, next_run_at=due)
