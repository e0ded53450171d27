"""End to end with a moved clock: a schedule due now gives exactly one export and one email
(the monthly one, with its pause link and RFC 8058 headers); next month's run exactly one
more; the email's link pauses the schedule with one POST."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from aiohttp.test_utils import TestClient

from exporter.dev.smtp import SmtpSink
from exporter.mail.messages import LIST_UNSUBSCRIBE_HEADER, LIST_UNSUBSCRIBE_POST_HEADER
from exporter.models import JobState
from exporter.resources import Resources
from exporter.schedules.model import PauseReason, RunOutcome
from exporter.schedules.run import run_due_schedules
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import login

Client = TestClient[Any, Any]


def _body_text(message: Any) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_a_monthly_schedule_makes_one_export_and_one_email_per_month(
    scheduler_resources: Resources,
    client: Client,
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
) -> None:
    resources = scheduler_resources
    user = await make_user()
    await seed_rows(user.user_id, 3)
    headers = await login(client, user)
    response = await client.post(
        "/v1/export-schedules",
        json={"day_of_month": 1, "time_zone": "Europe/Berlin"},
        headers=headers,
    )
    assert response.status == 201, await response.text()
    schedule = await response.json()
    schedule_id = schedule["id"]
    stored = await resources.schedules.get(schedule_id)
    assert stored is not None and stored.due_at is not None
    first_due = stored.due_at

    # The clock moves to the due time: every tick of that hour, exactly one export.
    exports: list[str] = []
    for minute in range(0, 60, 10):
        report = await run_due_schedules(resources, now=first_due + timedelta(minutes=minute))
        exports += [o for o, c in report.outcomes.items() for _ in range(c)]
    assert exports == ["created"]
    await run_worker()
    page = await resources.jobs.list_for_user(user.user_id, limit=10)
    (job,) = page.jobs
    assert job.status is JobState.SUCCEEDED and job.schedule_id == schedule_id
    (email,) = smtp_sink.for_export(job.job_id)

    assert email["Subject"].startswith("Your monthly memberships export is ready")
    unsubscribe = email[LIST_UNSUBSCRIBE_HEADER]
    assert re.fullmatch(r"<https?://[^>]+/v1/schedule-pause/[\w.-]+>", unsubscribe)
    assert email[LIST_UNSUBSCRIBE_POST_HEADER] == "List-Unsubscribe=One-Click"
    text = _body_text(email)
    assert "This is your monthly export" in text
    updated = await resources.schedules.get(schedule_id)
    assert updated is not None and updated.due_at is not None
    next_local = updated.due_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert next_local.day == 1 and updated.due_at > first_due + timedelta(days=27)
    when = f"{next_local:%A} {next_local.day} {next_local:%B %Y}, around {next_local:%H:%M}"
    assert when in text
    assert unsubscribe[1:-1] in text  # the same link, on a line of its own

    # GET on the schedule shows the run.
    shown = await (await client.get(f"/v1/export-schedules/{schedule_id}", headers=headers)).json()
    assert [(r["outcome"], r["export_id"]) for r in shown["runs"]] == [("created", job.job_id)]

    # Next month: exactly one more export and one more email.
    second_due = updated.due_at
    for minute in range(0, 60, 10):
        await run_due_schedules(resources, now=second_due + timedelta(minutes=minute))
    await run_worker()
    jobs = (await resources.jobs.list_for_user(user.user_id, limit=10)).jobs
    assert len(jobs) == 2
    second = next(j for j in jobs if j.job_id != job.job_id)
    assert len(smtp_sink.for_export(second.job_id)) == 1
    assert len(smtp_sink.for_export(job.job_id)) == 1
    final = await resources.schedules.get(schedule_id)
    assert final is not None
    assert [r.outcome for r in final.runs] == [RunOutcome.CREATED, RunOutcome.CREATED]

    # The email's one-click link: a GET (a scanner, a preview) changes nothing...
    path = urlsplit(unsubscribe[1:-1]).path
    confirm = await client.get(path, headers={"Accept": "text/html"})
    assert confirm.status == 200 and '<form method="post">' in await confirm.text()
    assert not (await resources.schedules.get(schedule_id)).paused  # type: ignore[union-attr]
    # ...and the mail provider's RFC 8058 POST pauses it, with no sign-in.
    posted = await client.post(
        path,
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.status == 200, await posted.text()
    paused = await resources.schedules.get(schedule_id)
    assert paused is not None and paused.paused_reason is PauseReason.UNSUBSCRIBED
    after = await run_due_schedules(resources, now=second_due + timedelta(days=40))
    assert after.due == 0
