"""When a monthly schedule's run falls due: pure rules over ``zoneinfo``.

A schedule runs on its day (1..28 or the month's last) in its own time zone, at a stable
offset inside the spread window (``schedules.window_start_hour`` + ``window_hours``, wall
clock): the offset is a hash of the schedule's id, as cron's ``H`` spreads jobs, so a
million schedules "on the 1st" start evenly over the window instead of at midnight, and
each one starts at the same local time every month.

Wall-clock times that do not exist (a spring-forward gap) resolve to the same instant as
the time before the gap plus the gap (02:30 in Berlin on the last Sunday of March is 03:30
CEST); ambiguous ones (the autumn hour that repeats) take the first occurrence. Either way
the run stays on the chosen day.
"""

from __future__ import annotations

import calendar
import hashlib
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exporter.schedules.model import LAST_DAY, DayOfMonth
from exporter.timezones import is_time_zone

# Days 29..31 are missing from some months: "last" is the way to ask for the month's end.
MAX_FIXED_DAY = 28


def zone(name: str) -> ZoneInfo:
    if not is_time_zone(name):
        raise ZoneInfoNotFoundError(name)
    return ZoneInfo(name)


def is_day_of_month(value: object) -> bool:
    """1..28 or ``"last"`` (never a bool, which Python counts as an int)."""
    if value == LAST_DAY and isinstance(value, str):
        return True
    return type(value) is int and 1 <= value <= MAX_FIXED_DAY


def window_offset_s(schedule_id: str, window_s: int) -> int:
    """The schedule's stable place in the window, 0 <= offset < window_s (seconds)."""
    digest = hashlib.sha256(schedule_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % window_s


def run_date(year: int, month: int, day: DayOfMonth) -> date:
    """The day of ``year``-``month`` a schedule on ``day`` runs."""
    if day == LAST_DAY:
        return date(year, month, calendar.monthrange(year, month)[1])
    assert isinstance(day, int)
    return date(year, month, day)


def due_in_month(
    schedule_id: str,
    *,
    day: DayOfMonth,
    time_zone: str,
    year: int,
    month: int,
    window_start_s: int,
    window_s: int,
) -> datetime:
    """When the run of ``year``-``month`` (months as the schedule's time zone sees them) is
    due, in UTC."""
    seconds = window_start_s + window_offset_s(schedule_id, window_s)
    local = datetime.combine(run_date(year, month, day), time()) + timedelta(seconds=seconds)
    return local.replace(tzinfo=zone(time_zone)).astimezone(UTC)


def next_due_after(
    schedule_id: str,
    *,
    day: DayOfMonth,
    time_zone: str,
    after: datetime,
    window_start_s: int,
    window_s: int,
) -> datetime:
    """The first run strictly after ``after``: this month's, if still to come, else next
    month's. Called with the time a run happened (or now), never with a past due time, so
    months missed while nothing ran are not made up one by one."""
    local = after.astimezone(zone(time_zone))
    year, month = local.year, local.month
    for _ in range(2):
        due = due_in_month(
            schedule_id,
            day=day,
            time_zone=time_zone,
            year=year,
            month=month,
            window_start_s=window_start_s,
            window_s=window_s,
        )
        if due > after:
            return due
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    raise AssertionError("next month's run is always after this month's")
