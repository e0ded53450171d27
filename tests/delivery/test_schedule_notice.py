"""What a scheduled export's email says of its schedule (delivery/schedule_notice.py) and how
the message carries it (mail/messages.py): the next date in the user's zone, the pause link
whole on its own line and as an HTML link, the RFC 8058 headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from exporter.auth import TokenService
from exporter.delivery.schedule_notice import schedule_notice
from exporter.mail.messages import (
    ExportAttachment,
    ScheduleNotice,
    build_export_message,
)
from exporter.models import utcnow
from exporter.resources import Resources
from exporter.schedules.manage import (
    ScheduleRequest,
    create_schedule,
    delete_schedule,
    pause_schedule,
)
from exporter.schedules.model import PauseReason
from tests.conftest import MakeUser
from tests.mail.test_messages import bodies, parsed


async def test_the_notice_names_the_next_run_and_a_working_pause_link(
    resources: Resources, tokens: TokenService, make_user: MakeUser
) -> None:
    user = await make_user()
    # Its first run was due in the past and not yet recorded (the email beat the scheduler):
    # the next date is still one to come.
    schedule = await create_schedule(
        resources,
        user.user_id,
        ScheduleRequest(day_of_month="last", time_zone="America/New_York"),
        now=utcnow() - timedelta(days=62),
    )
    notice = await schedule_notice(resources, schedule.schedule_id, user.user_id)
    assert notice is not None and notice.next_run_at is not None
    assert notice.next_run_at > utcnow()
    local = notice.next_run_at.astimezone(ZoneInfo("America/New_York"))
    assert (local + timedelta(days=1)).day == 1
    token = urlsplit(notice.pause_url).path.rsplit("/", 1)[1]
    claims = tokens.verify_schedule_pause(token, now=utcnow())
    assert (claims.subject, claims.schedule_id) == (user.user_id, schedule.schedule_id)

    await pause_schedule(resources, schedule.schedule_id, reason=PauseReason.USER)
    paused = await schedule_notice(resources, schedule.schedule_id, user.user_id)
    assert paused is not None and paused.next_run_at is None  # no date while paused
    assert await schedule_notice(resources, schedule.schedule_id, "someone-else") is None
    await delete_schedule(resources, user.user_id, schedule.schedule_id)
    assert await schedule_notice(resources, schedule.schedule_id, user.user_id) is None


def test_the_message_says_monthly_and_carries_the_unsubscribe_headers() -> None:
    url = "https://api.example.com/v1/schedule-pause/" + "a" * 400 + ".b.c"
    notice = ScheduleNotice(
        pause_url=url,
        time_zone="Europe/Berlin",
        next_run_at=datetime(2027, 3, 1, 2, 14, tzinfo=UTC),
    )
    message = build_export_message(
        sender="Exporter <exports@example.com>",
        recipient="someone@example.com",
        export_id="6a1c3c2e-6a5b-4bd3-8bd0-1d0a4a8b8f10",
        attachment=ExportAttachment(content=b"a,b\n", file_name="m.csv", row_count=1, byte_size=4),
        schedule=notice,
    )
    received = parsed(message)
    assert received["Subject"].startswith("Your monthly memberships export is ready")
    assert received["List-Unsubscribe"] == f"<{url}>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = bodies(received)
    assert "This is your monthly export" in text
    assert "Monday 1 March 2027, around 03:14 (Europe/Berlin)" in text
    assert f"  {url}\n" in text  # whole, on a line of its own
    assert f'<a href="{url}">Pause my monthly export</a>' in html

    plain = build_export_message(
        sender="Exporter <exports@example.com>",
        recipient="someone@example.com",
        export_id="6a1c3c2e-6a5b-4bd3-8bd0-1d0a4a8b8f10",
        attachment=ExportAttachment(content=b"a,b\n", file_name="m.csv", row_count=1, byte_size=4),
    )
    assert "List-Unsubscribe" not in plain and "monthly" not in plain["Subject"]
