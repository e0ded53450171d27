"""When runs fall due: month lengths, "last", leap years, DST in two time zones, the spread."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from exporter.schedules.timing import (
    due_in_month,
    is_day_of_month,
    next_due_after,
    run_date,
    window_offset_s,
)
from exporter.timezones import is_time_zone

HOUR = 3600
BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"


def test_last_day_follows_month_lengths_and_leap_years() -> None:
    assert run_date(2027, 2, "last") == date(2027, 2, 28)
    assert run_date(2028, 2, "last") == date(2028, 2, 29)
    assert run_date(2027, 4, "last") == date(2027, 4, 30)
    assert run_date(2027, 12, "last") == date(2027, 12, 31)
    assert run_date(2027, 2, 28) == date(2027, 2, 28)


@pytest.mark.parametrize("value", [1, 15, 28, "last"])
def test_days_that_every_month_has_are_accepted(value: object) -> None:
    assert is_day_of_month(value)


@pytest.mark.parametrize("value", [0, 29, 30, 31, -1, True, "1", "first", 1.0, None])
def test_other_days_are_refused(value: object) -> None:
    assert not is_day_of_month(value)


def test_time_zones_are_iana_names_only() -> None:
    assert is_time_zone(BERLIN) and is_time_zone(NEW_YORK) and is_time_zone("UTC")
    assert not is_time_zone("Mars/Olympus") and not is_time_zone("../etc/passwd")
    assert not is_time_zone("")


def _local(due: datetime, tz: str) -> datetime:
    return due.astimezone(ZoneInfo(tz))


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK])
def test_the_local_wall_time_is_the_same_every_month_across_dst(tz: str) -> None:
    """The offset is wall-clock time in the user's zone: the UTC instant moves by an hour
    across DST, the local time does not."""
    window = 6 * HOUR
    # Any slot outside 02:00-03:00, which one day a year does not have (the gap test).
    sid = next(
        s
        for s in (str(uuid.UUID(int=i)) for i in range(10_000))
        if window_offset_s(s, window) >= 3 * HOUR
    )
    offset = window_offset_s(sid, window)
    times = set()
    utc_offsets = set()
    for month in range(1, 13):
        due = due_in_month(
            sid, day=1, time_zone=tz, year=2027, month=month, window_start_s=0, window_s=window
        )
        local = _local(due, tz)
        assert local.day == 1 and local.month == month
        times.add((local.hour, local.minute, local.second))
        utc_offsets.add(local.utcoffset())
    h, rest = divmod(offset, HOUR)
    assert times == {(h, rest // 60, rest % 60)}
    assert len(utc_offsets) == 2  # winter and summer time both crossed


@pytest.mark.parametrize(
    ("tz", "gap_day"),
    [(BERLIN, date(2027, 3, 28)), (NEW_YORK, date(2027, 3, 14))],
)
def test_a_time_in_the_spring_forward_gap_still_runs_that_day(tz: str, gap_day: date) -> None:
    """02:00-03:00 does not exist on the spring-forward day; a schedule whose slot falls
    there runs an hour later on the clock, on the same day, once."""
    # Find an id whose slot falls in the gap (02:xx local) in a window 00:00-06:00.
    sid = next(
        s
        for s in (str(uuid.UUID(int=i)) for i in range(10_000))
        if 2 * HOUR <= window_offset_s(s, 6 * HOUR) < 3 * HOUR
    )
    due = due_in_month(
        sid,
        day=gap_day.day,
        time_zone=tz,
        year=gap_day.year,
        month=gap_day.month,
        window_start_s=0,
        window_s=6 * HOUR,
    )
    local = _local(due, tz)
    assert local.date() == gap_day
    assert local.hour == 3  # 02:mm does not exist: 03:mm summer time


@pytest.mark.parametrize(
    ("tz", "fall_day", "day", "repeated_hour", "summer_offset_h"),
    [(BERLIN, date(2027, 10, 31), "last", 2, 2), (NEW_YORK, date(2027, 11, 7), 7, 1, -4)],
)
def test_a_repeated_hour_in_autumn_runs_once_at_its_first_occurrence(
    tz: str, fall_day: date, day: int | str, repeated_hour: int, summer_offset_h: int
) -> None:
    sid = next(
        s
        for s in (str(uuid.UUID(int=i)) for i in range(10_000))
        if repeated_hour * HOUR <= window_offset_s(s, 6 * HOUR) < (repeated_hour + 1) * HOUR
    )
    kwargs = {"day": day, "time_zone": tz, "window_start_s": 0, "window_s": 6 * HOUR}
    due = due_in_month(sid, year=fall_day.year, month=fall_day.month, **kwargs)  # type: ignore[arg-type]
    local = _local(due, tz)
    assert local.date() == fall_day and local.hour == repeated_hour
    # The first of the two occurrences: still summer time.
    assert local.utcoffset() == timedelta(hours=summer_offset_h)
    # The run after it is next month's, not the second occurrence of the same hour.
    after = next_due_after(sid, after=due, **kwargs)  # type: ignore[arg-type]
    assert _local(after, tz).month == fall_day.month % 12 + 1


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK])
def test_month_boundary_last_day_in_february_of_a_leap_and_a_common_year(tz: str) -> None:
    sid = str(uuid.uuid4())
    kwargs = {"day": "last", "time_zone": tz, "window_start_s": 0, "window_s": 6 * HOUR}
    # The evening of January 31st in the user's zone is already February 1st in UTC (Berlin)
    # or still January 31st (New York): the month is the user's.
    jan31 = datetime(2028, 1, 31, 23, 30, tzinfo=ZoneInfo(tz))
    nxt = next_due_after(sid, after=jan31, **kwargs)  # type: ignore[arg-type]
    assert _local(nxt, tz).date() == date(2028, 2, 29)
    after_feb = next_due_after(sid, after=nxt, **kwargs)  # type: ignore[arg-type]
    assert _local(after_feb, tz).date() == date(2028, 3, 31)
    common = next_due_after(sid, after=datetime(2027, 2, 1, tzinfo=UTC), **kwargs)  # type: ignore[arg-type]
    assert _local(common, tz).date() == date(2027, 2, 28)


def test_next_due_after_a_long_outage_is_the_next_one_from_now_not_each_missed_one() -> None:
    sid = str(uuid.uuid4())
    kwargs = {"day": 1, "time_zone": BERLIN, "window_start_s": 0, "window_s": 6 * HOUR}
    now = datetime(2027, 5, 20, 12, tzinfo=UTC)
    nxt = next_due_after(sid, after=now, **kwargs)  # type: ignore[arg-type]
    assert _local(nxt, BERLIN).date() == date(2027, 6, 1)


def test_the_window_spreads_ten_thousand_ids_evenly_and_stably() -> None:
    window = 6 * HOUR
    ids = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(10_000)]
    offsets = [window_offset_s(i, window) for i in ids]
    assert all(0 <= o < window for o in offsets)
    assert offsets == [window_offset_s(i, window) for i in ids]  # stable
    per_hour = Counter(o // HOUR for o in offsets)
    assert set(per_hour) == set(range(6))
    # Even: each hour within 10 % of its share (1,667).
    assert all(abs(c - 10_000 / 6) < 10_000 / 6 * 0.1 for c in per_hour.values()), per_hour


def test_the_window_is_honoured_in_the_users_time() -> None:
    sid = str(uuid.uuid4())
    due = due_in_month(
        sid,
        day=10,
        time_zone=NEW_YORK,
        year=2027,
        month=6,
        window_start_s=8 * HOUR,
        window_s=2 * HOUR,
    )
    local = _local(due, NEW_YORK)
    assert local.date() == date(2027, 6, 10)
    assert (
        timedelta(hours=8)
        <= local - local.replace(hour=0, minute=0, second=0)
        < timedelta(hours=10)
    )
