"""The scheduler: claim each due schedule once, create its export, record the run, set the
next one. Called by an arq cron that runs once per tick across workers (``jobs/worker.py``),
and safe without that guarantee too:

- **claim**: a conditional write moves ``wake_at`` from the value read in the due index to
  the end of a lease, so of two schedulers that read the same schedule exactly one runs it;
- **create**: through ``exports.create.create_export``, the API's own use case (one active
  export per user, the daily quota), with an idempotency key per (schedule, due run, try),
  so a scheduler that died after creating and before recording is replaced, when its lease
  ends, by one that gets the same export back instead of a second one;
- **record**: the run (``export_id``, outcome) and the next wake-up, conditional on the
  claim still holding. An active export (``skipped_active``), a spent quota
  (``skipped_quota``) or a store or queue outage (``failed``) tries again
  ``schedules.retry_after_s`` later, up to ``schedules.retry_attempts`` tries; then, or
  after an export was created, the next run is the first chosen day after now, so runs
  missed while the workers were down happen once, not once per missed month;
- a disabled or deleted user's schedule is paused (``user_inactive``) at its next run.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from exporter.errors import (
    ConditionFailed,
    ExportRefused,
    QueueUnavailable,
    QuotaExceeded,
    StoreError,
)
from exporter.exports.create import (
    Active,
    Created,
    CreateResult,
    ExportRequest,
    Replayed,
    create_export,
)
from exporter.metrics import observe_schedule_lag, observe_schedule_run
from exporter.models import utcnow
from exporter.resources import Resources
from exporter.schedules.manage import next_due
from exporter.schedules.model import PauseReason, RunOutcome, Schedule, ScheduleRun
from exporter.store.dynamo import format_ts

log = structlog.stdlib.get_logger("exporter.schedules.run")

# ``exports.create.create_export``'s shape; the benchmark passes a stand-in that records
# starts instead of producing 10,000 exports (bench/schedules.py).
CreateExport = Callable[..., Awaitable[CreateResult]]


@dataclass(slots=True)
class TickReport:
    """What one tick found and did."""

    due: int = 0
    claimed: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, int]:
        return {"due": self.due, "claimed": self.claimed, **self.outcomes}


def idempotency_key(schedule: Schedule) -> str:
    """One key per (schedule, due run, try): a replaced scheduler replays, a retry creates."""
    assert schedule.due_at is not None
    return f"schedule:{schedule.schedule_id}:{format_ts(schedule.due_at)}:{schedule.attempt}"


async def run_due_schedules(
    resources: Resources, *, now: datetime | None = None, create: CreateExport = create_export
) -> TickReport:
    """Run every schedule due at ``now`` (up to ``schedules.batch_size``; the rest wait for
    the next tick), ``schedules.concurrency`` at a time."""
    settings = resources.settings.schedules
    now = now or utcnow()
    report = TickReport()
    due = await resources.schedules.due(now, limit=settings.batch_size)
    report.due = len(due)
    gate = asyncio.Semaphore(settings.concurrency)

    async def one(seen: Schedule) -> None:
        async with gate:
            outcome = await run_schedule(resources, seen, now=now, create=create)
        if outcome is not None:
            report.claimed += 1
            report.outcomes[outcome.value] += 1

    await asyncio.gather(*(one(s) for s in due))
    if report.due:
        log.info("schedules.tick", **report.as_dict())
    return report


async def run_schedule(
    resources: Resources,
    seen: Schedule,
    *,
    now: datetime,
    create: CreateExport = create_export,
) -> RunOutcome | None:
    """Claim and run one due schedule; None when another scheduler has it (or it changed)."""
    settings = resources.settings.schedules
    if seen.wake_at is None:
        return None
    claim_id = str(uuid.uuid4())
    try:
        claimed = await resources.schedules.claim(
            seen.schedule_id,
            seen_wake_at=seen.wake_at,
            claim_id=claim_id,
            lease_until=now + timedelta(seconds=settings.claim_lease_s),
        )
    except ConditionFailed:
        return None  # another scheduler took it, or it was paused, changed or deleted
    except StoreError as exc:
        # DynamoDB is away: the schedule stays due and the next tick tries again.
        log.warning("schedule.claim_failed", schedule_id=seen.schedule_id, error=str(exc))
        return None
    assert claimed.due_at is not None
    with structlog.contextvars.bound_contextvars(
        schedule_id=claimed.schedule_id, user_id=claimed.user_id
    ):
        if claimed.attempt == 0:
            observe_schedule_lag((now - claimed.due_at).total_seconds())
        try:
            return await _run_claimed(resources, claimed, claim_id, now=now, create=create)
        except StoreError as exc:
            # Not recorded: the lease runs out and the next scheduler tries again, with the
            # same idempotency key (so an export created here is not created twice).
            log.warning("schedule.run_not_recorded", error=str(exc))
            observe_schedule_run(RunOutcome.FAILED.value)
            return RunOutcome.FAILED


async def _run_claimed(
    resources: Resources,
    claimed: Schedule,
    claim_id: str,
    *,
    now: datetime,
    create: CreateExport,
) -> RunOutcome:
    settings = resources.settings.schedules
    assert claimed.due_at is not None
    user = await resources.users.get(claimed.user_id)
    if user is None or not user.active:
        await resources.schedules.pause(
            claimed.schedule_id, reason=PauseReason.USER_INACTIVE, now=now
        )
        await resources.schedules.append_run(
            claimed.schedule_id,
            ScheduleRun(due_at=claimed.due_at, ran_at=now, outcome=RunOutcome.STOPPED),
        )
        log.info("schedule.stopped", reason="user_inactive")
        observe_schedule_run(RunOutcome.STOPPED.value)
        return RunOutcome.STOPPED

    export_id: str | None = None
    retry_after_s = settings.retry_after_s
    request = ExportRequest(fmt=claimed.format, bom=claimed.bom, schedule_id=claimed.schedule_id)
    try:
        result = await create(
            resources, claimed.user_id, request, idempotency_key=idempotency_key(claimed)
        )
    except QuotaExceeded as exc:
        outcome = RunOutcome.SKIPPED_QUOTA
        retry_after_s = max(retry_after_s, exc.retry_after_s)
    except (ExportRefused, StoreError, QueueUnavailable) as exc:
        log.warning("schedule.create_failed", error=str(exc))
        outcome = RunOutcome.FAILED
    else:
        export_id = result.job.job_id
        if isinstance(result, Created) or (isinstance(result, Replayed) and result.status == 202):
            outcome = RunOutcome.CREATED
        else:
            assert isinstance(result, Active | Replayed)
            outcome = RunOutcome.SKIPPED_ACTIVE

    run = ScheduleRun(due_at=claimed.due_at, ran_at=now, outcome=outcome, export_id=export_id)
    runs = (*claimed.runs, run)[-settings.runs_kept :]
    retry = outcome is not RunOutcome.CREATED and claimed.attempt + 1 < settings.retry_attempts
    if retry:
        due_at, attempt = claimed.due_at, claimed.attempt + 1
        wake_at = now + timedelta(seconds=retry_after_s)
    else:
        # From now, never from the missed due time: a long outage costs one run, not many.
        due_at = wake_at = next_due(
            settings,
            claimed.schedule_id,
            day=claimed.day_of_month,
            time_zone=claimed.time_zone,
            after=max(now, claimed.due_at),
        )
        attempt = 0
    try:
        await resources.schedules.finish(
            claimed.schedule_id,
            claim_id=claim_id,
            runs=runs,
            due_at=due_at,
            wake_at=wake_at,
            attempt=attempt,
            now=now,
        )
    except ConditionFailed as exc:
        # Paused, changed or deleted since the claim: it keeps its new
        # timing; the run is still recorded so the export it made shows on the schedule.
        log.info("schedule.claim_lost", error=str(exc))
        await resources.schedules.append_run(claimed.schedule_id, run)
    log.info(
        "schedule.ran",
        outcome=outcome.value,
        export_id=export_id,
        due_at=claimed.due_at.isoformat(),
        next_wake_at=wake_at.isoformat(),
    )
    observe_schedule_run(outcome.value)
    return outcome
