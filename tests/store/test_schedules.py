"""The schedules repository on DynamoDB Local: the per-user limit under racing creates, the
sparse due index, and owner conditions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from exporter.errors import ConditionFailed
from exporter.models import ExportFormat
from exporter.resources import Resources
from exporter.schedules.model import PauseReason, RunOutcome, Schedule, ScheduleRun

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _schedule(user_id: str, *, due: datetime = T0, day: int | str = 1) -> Schedule:
    return Schedule(
        schedule_id=str(uuid.uuid4()),
        user_id=user_id,
        day_of_month=day,  # type: ignore[arg-type]
        time_zone="Europe/Berlin",
        format=ExportFormat.CSV_GZ,
        bom=True,
        created_at=T0 - timedelta(days=3),
        updated_at=T0 - timedelta(days=3),
        due_at=due,
        wake_at=due,
    )


async def test_ten_racing_creates_leave_exactly_the_limit(resources: Resources) -> None:
    user_id = f"user-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(resources.schedules.create(_schedule(user_id), max_per_user=3) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, ConditionFailed) for r in results if r is not None)
    mine = await resources.schedules.list_for_user(user_id)
    assert len(mine) == 3
    # Deleting one frees one place, and only the owner can delete.
    with pytest.raises(ConditionFailed):
        await resources.schedules.delete(mine[0].schedule_id, user_id="someone-else")
    await resources.schedules.delete(mine[0].schedule_id, user_id=user_id)
    await resources.schedules.create(_schedule(user_id), max_per_user=3)
    with pytest.raises(ConditionFailed):
        await resources.schedules.create(_schedule(user_id), max_per_user=3)


async def test_a_schedule_round_trips_with_its_runs(resources: Resources) -> None:
    schedule = _schedule(f"user-{uuid.uuid4()}", day="last")
    await resources.schedules.create(schedule, max_per_user=3)
    assert await resources.schedules.get(schedule.schedule_id) == schedule
    run = ScheduleRun(due_at=T0, ran_at=T0 + timedelta(minutes=1), outcome=RunOutcome.CREATED)
    claimed = await resources.schedules.claim(
        schedule.schedule_id, seen_wake_at=T0, claim_id="c1", lease_until=T0 + timedelta(hours=1)
    )
    nxt = T0 + timedelta(days=31)
    await resources.schedules.finish(
        schedule.schedule_id,
        claim_id="c1",
        runs=(*claimed.runs, run),
        due_at=nxt,
        wake_at=nxt,
        attempt=0,
        now=T0,
    )
    stored = await resources.schedules.get(schedule.schedule_id)
    assert stored == schedule.replace(due_at=nxt, wake_at=nxt, runs=(run,))
    assert await resources.schedules.get("owner#" + schedule.user_id) is None  # not a schedule


async def test_only_schedules_that_are_not_paused_are_in_the_due_index(
    resources: Resources,
) -> None:
    # Far in the past: older than anything another test in this process leaves due.
    due = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(seconds=uuid.uuid4().int % 10_000)
    user_id = f"user-{uuid.uuid4()}"
    live, paused = _schedule(user_id, due=due), _schedule(user_id, due=due)
    for s in (live, paused):
        await resources.schedules.create(s, max_per_user=3)
    await resources.schedules.pause(paused.schedule_id, reason=PauseReason.USER, now=T0)
    found = {s.schedule_id for s in await resources.schedules.due(due, limit=1000)}
    assert live.schedule_id in found and paused.schedule_id not in found
    # A claim moves it out of reach until its lease ends; finishing with a lost claim fails.
    await resources.schedules.claim(
        live.schedule_id, seen_wake_at=due, claim_id="c", lease_until=due + timedelta(hours=1)
    )
    assert live.schedule_id not in {
        s.schedule_id for s in await resources.schedules.due(due, limit=1000)
    }
    with pytest.raises(ConditionFailed):
        await resources.schedules.finish(
            live.schedule_id, claim_id="other", runs=(), due_at=due, wake_at=due, attempt=0, now=due
        )
    # Pausing by someone else's id is refused.
    with pytest.raises(ConditionFailed):
        await resources.schedules.pause(
            live.schedule_id, reason=PauseReason.USER, now=T0, user_id="someone-else"
        )
