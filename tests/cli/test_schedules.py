"""``exporter schedules list|pause|resume`` on real services."""

from __future__ import annotations

import json
import uuid

import pytest

from exporter.config import Settings
from exporter.resources import Resources
from exporter.schedules.manage import ScheduleRequest, create_schedule
from exporter.schedules.model import PauseReason
from tests.cli.test_ops import exporter_cli
from tests.conftest import MakeUser


async def test_list_pause_and_resume(
    resources: Resources,
    settings: Settings,
    make_user: MakeUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = await make_user()
    schedule = await create_schedule(
        resources, user.user_id, ScheduleRequest(day_of_month="last", time_zone="Asia/Tokyo")
    )

    capsys.readouterr()
    assert await exporter_cli(settings, "schedules", "list", "--user", user.user_id, "--json") == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if '"frequency"' in x]
    listed = json.loads(line)
    assert listed["id"] == schedule.schedule_id and listed["user_id"] == user.user_id
    assert listed["day_of_month"] == "last" and listed["paused"] is False

    assert await exporter_cli(settings, "schedules", "pause", schedule.schedule_id) == 0
    paused = await resources.schedules.get(schedule.schedule_id)
    assert paused is not None and paused.paused_reason is PauseReason.OPERATOR
    assert paused.wake_at is None
    assert await exporter_cli(settings, "schedules", "list") == 0
    table = capsys.readouterr().out
    assert schedule.schedule_id in table and "paused (operator)" in table

    assert await exporter_cli(settings, "schedules", "resume", schedule.schedule_id) == 0
    resumed = await resources.schedules.get(schedule.schedule_id)
    assert resumed is not None and not resumed.paused and resumed.wake_at is not None
    assert "resumed; next run" in capsys.readouterr().out


async def test_unknown_or_malformed_ids_are_refused(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await exporter_cli(settings, "schedules", "pause", str(uuid.uuid4())) == 2
    assert "no schedule" in capsys.readouterr().err
    assert await exporter_cli(settings, "schedules", "resume", "nope") == 2
    assert "not a schedule id" in capsys.readouterr().err
