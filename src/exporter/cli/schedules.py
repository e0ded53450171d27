"""Operator commands for monthly export schedules: ``exporter schedules list|pause|resume``.

They call the same use cases as the API (``schedules/manage.py``); a pause by an operator
is recorded as such (``paused_reason: operator``), and a resume runs the schedule from its
next chosen day.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from exporter.cli.common import with_resources
from exporter.config import Settings
from exporter.errors import CommandError, ScheduleNotFound
from exporter.resources import Resources
from exporter.schedules.manage import pause_schedule, resume_schedule
from exporter.schedules.model import PauseReason, Schedule
from exporter.schedules.view import schedule_body

LIST_LIMIT_DEFAULT = 100


async def list_schedules(
    resources: Resources, *, user_id: str | None = None, limit: int = LIST_LIMIT_DEFAULT
) -> list[Schedule]:
    """Schedules oldest first: one user's (an index query) or everyone's (a scan)."""
    if user_id is not None:
        return (await resources.schedules.list_for_user(user_id))[:limit]
    return await resources.schedules.list_all(limit=limit)


async def set_paused(resources: Resources, schedule_id: str, *, paused: bool) -> Schedule:
    try:
        uuid.UUID(schedule_id)
    except ValueError:
        raise CommandError(f"{schedule_id!r} is not a schedule id (a UUID)") from None
    try:
        if paused:
            return await pause_schedule(resources, schedule_id, reason=PauseReason.OPERATOR)
        return await resume_schedule(resources, schedule_id)
    except ScheduleNotFound:
        raise CommandError(f"no schedule {schedule_id}") from None


def add_schedule_parsers(sub: Any) -> None:
    """Register ``schedules`` on the ``exporter`` command's subparsers."""
    schedules = sub.add_parser("schedules", help="monthly export schedules (operators)")
    commands = schedules.add_subparsers(dest="schedules_command", required=True)
    listing = commands.add_parser("list", help="schedules, oldest first")
    listing.add_argument("--user", help="only this user's schedules (user id)")
    listing.add_argument("--limit", type=int, default=LIST_LIMIT_DEFAULT)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_schedules_list)
    for name, text in (
        ("pause", "stop a schedule's runs (paused_reason: operator)"),
        ("resume", "run a paused schedule again from its next chosen day"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("schedule_id")
        p.set_defaults(func=cmd_schedules_pause if name == "pause" else cmd_schedules_resume)


def cmd_schedules_list(settings: Settings, args: argparse.Namespace) -> int:
    found: list[Schedule] = with_resources(
        settings, lambda r: list_schedules(r, user_id=args.user, limit=args.limit)
    )
    if args.json:
        for schedule in found:
            print(json.dumps({**schedule_body(schedule), "user_id": schedule.user_id}))
        return 0
    print(f"{'ID':36}  {'USER':36}  {'DAY':4}  {'TIME ZONE':20}  {'NEXT RUN (UTC)':20}  LAST RUN")
    for s in found:
        state = (
            f"paused ({s.paused_reason.value})"
            if s.paused_reason is not None
            else f"{s.due_at:%Y-%m-%dT%H:%M:%SZ}"
        )
        last = f"{s.runs[-1].outcome.value} {s.runs[-1].export_id or ''}" if s.runs else ""
        print(
            f"{s.schedule_id:36}  {s.user_id:36}  {s.day_of_month!s:4}  {s.time_zone:20}  "
            f"{state:20}  {last}".rstrip()
        )
    return 0


def cmd_schedules_pause(settings: Settings, args: argparse.Namespace) -> int:
    with_resources(settings, lambda r: set_paused(r, args.schedule_id, paused=True))
    print(f"{args.schedule_id} paused")
    return 0


def cmd_schedules_resume(settings: Settings, args: argparse.Namespace) -> int:
    schedule: Schedule = with_resources(
        settings, lambda r: set_paused(r, args.schedule_id, paused=False)
    )
    print(f"{schedule.schedule_id} resumed; next run {schedule.due_at:%Y-%m-%dT%H:%M:%SZ}")
    return 0
