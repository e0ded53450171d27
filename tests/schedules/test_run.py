"""The scheduler against DynamoDB Local: claiming, creating through the export use case,
recording, retrying, recovering, stopping."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from exporter.exports.cancel import cancel_export
from exporter.exports.create import Created, ExportRequest, create_export
from exporter.metrics import sample_value
from exporter.resources import Resources, open_resources
from exporter.schedules.manage import ScheduleRequest, create_schedule, pause_schedule
from exporter.schedules.model import PauseReason, RunOutcome, Schedule
from exporter.schedules.run import idempotency_key, run_due_schedules, run_schedule
from tests.conftest import MakeUser

BERLIN = "Europe/Berlin"


async def _schedule(
    resources: Resources, user_id: str, *, created: datetime, day: int | str = 1
) -> Schedule:
    return await create_schedule(
        resources,
        user_id,
        ScheduleRequest(day_of_month=day, time_zone=BERLIN),  # type: ignore[arg-type]
        now=created,
    )


async def _exports_of(resources: Resources, user_id: str) -> list[str]:
    page = await resources.jobs.list_for_user(user_id, limit=100)
    return [j.job_id for j in page.jobs]


async def test_a_due_schedule_creates_one_export_marked_with_its_schedule(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    resources = scheduler_resources
    user = await make_user()
    schedule = await _schedule(resources, user.user_id, created=datetime(2027, 1, 10, tzinfo=UTC))
    assert schedule.due_at is not None
    before = sample_value("exporter_schedule_runs_total", {"outcome": "created"})
    lags_before = sample_value("exporter_schedule_lag_seconds_count")
    lag_sum_before = sample_value("exporter_schedule_lag_seconds_sum")

    early = await run_due_schedules(resources, now=schedule.due_at - timedelta(seconds=1))
    report = await run_due_schedules(resources, now=schedule.due_at + timedelta(seconds=30))
    again = await run_due_schedules(resources, now=schedule.due_at + timedelta(seconds=90))

    assert early.due == 0
    assert report.claimed == 1 and report.outcomes == {"created": 1}
    assert again.due == 0
    (export_id,) = await _exports_of(resources, user.user_id)
    job = await resources.jobs.get(export_id)
    assert job is not None and job.schedule_id == schedule.schedule_id
    stored = await resources.schedules.get(schedule.schedule_id)
    assert stored is not None and stored.due_at is not None
    assert [(r.outcome, r.export_id) for r in stored.runs] == [(RunOutcome.CREATED, export_id)]
    assert schedule.due_at.astimezone(ZoneInfo(BERLIN)).date() == date(2027, 2, 1)
    assert stored.due_at.astimezone(ZoneInfo(BERLIN)).date() == date(2027, 3, 1)  # next month
    assert sample_value("exporter_schedule_runs_total", {"outcome": "created"}) == before + 1
    assert sample_value("exporter_schedule_lag_seconds_count") == lags_before + 1
    assert sample_value("exporter_schedule_lag_seconds_sum") == lag_sum_before + 30


async def test_two_schedulers_racing_start_each_due_schedule_exactly_once(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    resources = scheduler_resources
    users = [await make_user() for _ in range(12)]
    created = datetime(2027, 1, 10, tzinfo=UTC)
    for user in users:
        await _schedule(resources, user.user_id, created=created)
    now = datetime(2027, 2, 2, tzinfo=UTC)  # every one of them is due

    async with open_resources(resources.settings) as other:
        first, second = await asyncio.gather(
            run_due_schedules(resources, now=now), run_due_schedules(other, now=now)
        )

    # Each due schedule was started by exactly one of them, however their reads interleaved.
    assert first.claimed + second.claimed == 12
    assert first.due + second.due >= 12
    for user in users:
        assert len(await _exports_of(resources, user.user_id)) == 1


async def test_two_claims_of_the_same_read_at_the_same_moment_start_one_run(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    resources = scheduler_resources
    users = [await make_user() for _ in range(5)]
    schedules = [
        await _schedule(resources, u.user_id, created=datetime(2027, 1, 10, tzinfo=UTC))
        for u in users
    ]
    now = datetime(2027, 2, 2, tzinfo=UTC)
    async with open_resources(resources.settings) as other:
        results = await asyncio.gather(
            *(run_schedule(r, s, now=now) for s in schedules for r in (resources, other))
        )
    assert [r for r in results if r is not None] == [RunOutcome.CREATED] * 5
    for user in users:
        assert len(await _exports_of(resources, user.user_id)) == 1


async def test_a_stale_read_cannot_claim_a_run_already_taken(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    """A scheduler that read the index before another one ran the schedule (or a retry of
    the same tick) finds its condition failed."""
    resources = scheduler_resources
    user = await make_user()
    schedule = await _schedule(resources, user.user_id, created=datetime(2027, 1, 10, tzinfo=UTC))
    now = datetime(2027, 2, 2, tzinfo=UTC)

    assert await run_schedule(resources, schedule, now=now) is RunOutcome.CREATED
    assert await run_schedule(resources, schedule, now=now) is None
    assert len(await _exports_of(resources, user.user_id)) == 1


async def test_an_active_export_skips_the_run_and_it_is_retried_later_that_day(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    resources = scheduler_resources
    user = await make_user()
    schedule = await _schedule(resources, user.user_id, created=datetime(2027, 1, 10, tzinfo=UTC))
    assert schedule.due_at is not None
    running = await create_export(resources, user.user_id, ExportRequest())
    assert isinstance(running, Created)
    now = schedule.due_at + timedelta(minutes=1)

    skipped = await run_due_schedules(resources, now=now)
    stored = await resources.schedules.get(schedule.schedule_id)
    assert skipped.outcomes == {"skipped_active": 1}
    assert stored is not None and stored.wake_at is not None
    retry_at = now + timedelta(seconds=resources.settings.schedules.retry_after_s)
    assert stored.wake_at == retry_at and stored.due_at == schedule.due_at
    assert stored.attempt == 1
    assert stored.runs[-1].outcome is RunOutcome.SKIPPED_ACTIVE
    assert stored.runs[-1].export_id == running.job.job_id
    assert (await run_due_schedules(resources, now=retry_at - timedelta(seconds=1))).due == 0

    # The active export finishes; the retry, the same day, creates the month's export.
    await cancel_export(resources, running.job)
    retried = await run_due_schedules(resources, now=retry_at)
    assert retried.outcomes == {"created": 1}
    done = await resources.schedules.get(schedule.schedule_id)
    assert done is not None and done.due_at is not None
    assert done.due_at.astimezone(UTC) > retry_at + timedelta(days=20)  # next month
    assert [r.outcome for r in done.runs] == [RunOutcome.SKIPPED_ACTIVE, RunOutcome.CREATED]
    assert len(await _exports_of(resources, user.user_id)) == 2


async def test_runs_missed_while_workers_were_down_happen_once(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    """Three monthly runs missed (no tick for three months): one export when the
    scheduler is back, and the next run is the next chosen day from then."""
    resources = scheduler_resources
    user = await make_user()
    await _schedule(resources, user.user_id, created=datetime(2027, 1, 10, tzinfo=UTC))
    back = datetime(2027, 4, 15, 12, tzinfo=UTC)

    reports = [
        await run_due_schedules(resources, now=back + timedelta(minutes=i)) for i in range(5)
    ]

    assert [r.claimed for r in reports] == [1, 0, 0, 0, 0]
    assert len(await _exports_of(resources, user.user_id)) == 1
    (stored,) = await resources.schedules.list_for_user(user.user_id)
    assert stored.due_at is not None
    assert stored.due_at.astimezone(UTC).date() in (
        datetime(2027, 4, 30, tzinfo=UTC).date(),
        datetime(2027, 5, 1, tzinfo=UTC).date(),
    )


async def test_a_scheduler_that_died_after_creating_is_replaced_without_a_second_export(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    """Crash between create and record: after the lease, the next claim replays the same
    idempotency key and records the export the dead one made."""
    resources = scheduler_resources
    user = await make_user()
    schedule = await _schedule(resources, user.user_id, created=datetime(2027, 1, 10, tzinfo=UTC))
    assert schedule.due_at is not None and schedule.wake_at is not None
    now = schedule.due_at + timedelta(seconds=5)
    claimed = await resources.schedules.claim(
        schedule.schedule_id,
        seen_wake_at=schedule.wake_at,
        claim_id="dead-scheduler",
        lease_until=now + timedelta(seconds=resources.settings.schedules.claim_lease_s),
    )
    made = await create_export(
        resources,
        user.user_id,
        ExportRequest(schedule_id=schedule.schedule_id),
        idempotency_key=idempotency_key(claimed),
    )
    assert isinstance(made, Created)
    # ...and the process dies here. Within the lease nobody touches it:
    assert (await run_due_schedules(resources, now=now + timedelta(seconds=60))).due == 0
    after_lease = now + timedelta(seconds=resources.settings.schedules.claim_lease_s + 1)
    report = await run_due_schedules(resources, now=after_lease)

    assert report.outcomes == {"created": 1}
    assert await _exports_of(resources, user.user_id) == [made.job.job_id]
    stored = await resources.schedules.get(schedule.schedule_id)
    assert stored is not None and stored.runs[-1].export_id == made.job.job_id


async def test_a_disabled_or_deleted_users_schedule_is_stopped(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    resources = scheduler_resources
    disabled = await make_user()
    created = datetime(2027, 1, 10, tzinfo=UTC)
    schedule = await _schedule(resources, disabled.user_id, created=created)
    await resources.users.set_active(disabled.user_id, active=False)
    gone = await _schedule(resources, "no-such-user", created=created)

    report = await run_due_schedules(resources, now=datetime(2027, 2, 2, tzinfo=UTC))

    assert report.outcomes == {"stopped": 2}
    for sid in (schedule.schedule_id, gone.schedule_id):
        stored = await resources.schedules.get(sid)
        assert stored is not None and stored.paused_reason is PauseReason.USER_INACTIVE
        assert stored.wake_at is None and stored.runs[-1].outcome is RunOutcome.STOPPED
    assert await _exports_of(resources, disabled.user_id) == []
    assert (await run_due_schedules(resources, now=datetime(2027, 6, 2, tzinfo=UTC))).due == 0


async def test_a_paused_schedule_is_not_run(
    scheduler_resources: Resources, make_user: MakeUser
) -> None:
    resources = scheduler_resources
    user = await make_user()
    schedule = await _schedule(resources, user.user_id, created=datetime(2027, 1, 10, tzinfo=UTC))
    await pause_schedule(resources, schedule.schedule_id, reason=PauseReason.USER)

    assert (await run_due_schedules(resources, now=datetime(2027, 5, 2, tzinfo=UTC))).due == 0
    assert await _exports_of(resources, user.user_id) == []
