"""Scheduler benchmark: 10,000 monthly schedules due on the same day start spread over the
configured window, each exactly once, with two schedulers racing.

    python -m bench.schedules [--schedules 10000] [--window-hours 6] [--tick-s 60]
                              [--time-zone Europe/Berlin] [--json]

Starts its own DynamoDB Local (in memory, loopback), creates the tables, 10,000 users and one
schedule each (day 1, ``--time-zone``), then moves a simulated clock through that day in
``--tick-s`` steps from just before the window to just after it. At each step two
schedulers (two sets of clients, as two worker pods would have) run the real tick
(``schedules.run.run_due_schedules``: the sparse due-index query, the conditional claim, the
record and the move to next month) at the same time. Only the export itself is a stand-in
that records when each schedule started: 10,000 real exports are the export benchmark's
business, not the scheduler's. Prints a histogram of starts per half hour of the window, the
lag between due and start, duplicates (must be 0), and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import SecretStr

from exporter.config import (
    DynamoSettings,
    Environment,
    PostgresSettings,
    ScheduleSettings,
    Settings,
)
from exporter.dev.dynamodb import start_dynamodb
from exporter.exports.create import Created, ExportRequest
from exporter.logs import configure_logging
from exporter.models import ExportJob, User
from exporter.resources import Resources, open_resources
from exporter.schedules.manage import ScheduleRequest, create_schedule
from exporter.schedules.run import run_due_schedules
from exporter.schedules.timing import due_in_month
from exporter.store.tables import create_tables

SLICE_S = 1800  # the histogram's slices: half an hour of the window each


async def _populate(resources: Resources, count: int, *, time_zone: str, created: datetime) -> None:
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with gate:
            user_id = f"bench-user-{i:06d}"
            await resources.users.create(
                User(
                    user_id=user_id,
                    email=f"{user_id}@example.com",
                    password_hash="!",  # noqa: S106 - no password: nobody signs in here
                    active=True,
                    scopes=(),
                    created_at=created,
                )
            )
            await create_schedule(
                resources,
                user_id,
                ScheduleRequest(day_of_month=1, time_zone=time_zone),
                now=created,
            )

    await asyncio.gather(*(one(i) for i in range(count)))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    local = start_dynamodb()
    try:
        settings = Settings(
            environment=Environment.TEST,
            log_level="WARNING",
            log_json=True,
            postgres=PostgresSettings(
                dsn=SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"), pool_min_size=0
            ),
            dynamo=DynamoSettings(endpoint_url=local.endpoint_url, table_prefix="bench-"),
            schedules=ScheduleSettings(window_hours=args.window_hours, batch_size=1000),
        )
        configure_logging(settings)
        tz = ZoneInfo(args.time_zone)
        day = datetime(2027, 3, 1, tzinfo=tz)
        window_start = day + timedelta(seconds=settings.schedules.window_start_s)
        window_end = window_start + timedelta(seconds=settings.schedules.window_s)
        async with (
            open_resources(settings, pg_min_size=0, export_reads=False) as first,
            open_resources(settings, pg_min_size=0, export_reads=False) as second,
        ):
            await create_tables(first.dynamo, settings.dynamo)
            started = time.monotonic()
            await _populate(
                first,
                args.schedules,
                time_zone=args.time_zone,
                created=datetime(2027, 2, 10, tzinfo=UTC),
            )
            setup_s = time.monotonic() - started

            starts: list[tuple[str, datetime]] = []
            clock: list[datetime] = [window_start]

            async def stand_in(
                resources: Resources, user_id: str, request: ExportRequest, **_: Any
            ) -> Created:
                assert request.schedule_id is not None
                starts.append((request.schedule_id, clock[0]))
                return Created(
                    ExportJob.new(
                        user_id=user_id,
                        fmt=request.fmt,
                        now=clock[0],
                        retention_s=3600,
                        schedule_id=request.schedule_id,
                    )
                )

            now = window_start - timedelta(minutes=10)
            end = window_end + timedelta(minutes=10)
            tick_seconds: list[float] = []
            claimed = [0, 0]
            ticks = 0
            run_started = time.monotonic()
            while now <= end:
                clock[0] = now
                t0 = time.monotonic()
                a, b = await asyncio.gather(
                    run_due_schedules(first, now=now, create=stand_in),
                    run_due_schedules(second, now=now, create=stand_in),
                )
                tick_seconds.append(time.monotonic() - t0)
                claimed[0] += a.claimed
                claimed[1] += b.claimed
                ticks += 1
                now += timedelta(seconds=args.tick_s)
            run_s = time.monotonic() - run_started
            # Two more ticks a month later than the window: nothing is due twice.
            leftover = await run_due_schedules(first, now=end + timedelta(days=1), create=stand_in)
    finally:
        local.stop()

    per_schedule = Counter(sid for sid, _ in starts)
    duplicates = sum(c - 1 for c in per_schedule.values())
    slices = Counter(int((at - window_start).total_seconds() // SLICE_S) for _, at in starts)
    n_slices = settings.schedules.window_s // SLICE_S
    outside = sum(c for s, c in slices.items() if not 0 <= s < n_slices)
    # Lag: start minus the schedule's own due time (= the tick's delay, at most one tick).
    lags = []
    for sid, at in starts:
        due = due_in_month(
            sid,
            day=1,
            time_zone=args.time_zone,
            year=2027,
            month=3,
            window_start_s=settings.schedules.window_start_s,
            window_s=settings.schedules.window_s,
        )
        lags.append((at - due).total_seconds())
    counts = [slices.get(i, 0) for i in range(n_slices)]
    mean = statistics.mean(counts)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "schedules": args.schedules,
        "time_zone": args.time_zone,
        "window": f"{window_start:%H:%M}-{window_end:%H:%M} local on {day:%Y-%m-%d}",
        "tick_s": args.tick_s,
        "ticks": ticks,
        "schedulers": 2,
        "starts": len(starts),
        "distinct_schedules_started": len(per_schedule),
        "duplicates": duplicates,
        "starts_after_window_end": outside,  # due in its last minute, started at the next tick
        "due_again_a_day_later": leftover.due,
        "claimed_by_scheduler": claimed,
        "per_half_hour": counts,
        "per_half_hour_max_vs_mean": round(max(counts) / mean, 3),
        "per_half_hour_min_vs_mean": round(min(counts) / mean, 3),
        "lag_s_max": max(lags),
        "lag_s_median": statistics.median(lags),
        "tick_s_median": round(statistics.median(tick_seconds), 3),
        "tick_s_max": round(max(tick_seconds), 3),
        "setup_s": round(setup_s, 1),
        "simulated_day_s": round(run_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--window-hours", type=int, default=6)
    parser.add_argument("--tick-s", type=int, default=60)
    parser.add_argument("--time-zone", default="Europe/Berlin")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    if not args.json:
        print(
            f"{result['starts']:,} starts of {result['schedules']:,} schedules, "
            f"{result['duplicates']} duplicates, window {result['window']} ({result['time_zone']})"
        )
        for i, count in enumerate(result["per_half_hour"]):
            h, m = divmod(i * SLICE_S // 60, 60)
            print(f"  +{h:02d}:{m:02d}  {count:6,}  {'#' * round(count / 50)}")
        print(
            f"lag due->start: median {result['lag_s_median']:.0f} s, "
            f"max {result['lag_s_max']:.0f} s"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
