"""The pause link of a scheduled export's email: valid (GET confirms, POST pauses), tampered,
expired, another user's, a deleted schedule; pages for browsers, problems for API clients."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from exporter.auth import TokenService
from exporter.config import Settings
from exporter.models import utcnow
from exporter.resources import Resources
from exporter.schedules.manage import ScheduleRequest, create_schedule, delete_schedule
from exporter.schedules.model import PauseReason
from exporter.schedules.pause_link import pause_url
from tests.conftest import MakeUser

Client = TestClient[Any, Any]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ONE_CLICK = "List-Unsubscribe=One-Click"


async def _link(
    resources: Resources, settings: Settings, tokens: TokenService, user_id: str, **kw: Any
) -> tuple[str, str]:
    schedule = await create_schedule(
        resources, user_id, ScheduleRequest(day_of_month=1, time_zone="UTC")
    )
    url = pause_url(
        tokens,
        settings.api.public_url,
        schedule_id=schedule.schedule_id,
        user_id=kw.get("owner", user_id),
        now=kw.get("now", utcnow()),
        ttl_days=kw.get("ttl_days", 30),
    )
    return schedule.schedule_id, urlsplit(url).path


async def test_a_valid_link_confirms_on_get_and_pauses_on_post(
    client: Client,
    resources: Resources,
    settings: Settings,
    tokens: TokenService,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    schedule_id, path = await _link(resources, settings, tokens, user.user_id)

    for accept in ("text/html", "*/*"):
        page = await client.get(path, headers={"Accept": accept})
        assert page.status == 200 and page.content_type == "text/html"
        assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    still = await resources.schedules.get(schedule_id)
    assert still is not None and not still.paused

    posted = await client.post(path, data=ONE_CLICK, headers=FORM)
    assert posted.status == 200
    paused = await resources.schedules.get(schedule_id)
    assert paused is not None and paused.paused_reason is PauseReason.UNSUBSCRIBED
    assert paused.wake_at is None
    # A second click (or the provider retrying) is fine.
    assert (await client.post(path, data=ONE_CLICK, headers=FORM)).status == 200
    assert "is paused" in await (await client.get(path)).text()


@pytest.mark.parametrize("accept", ["application/json", "text/html"])
async def test_tampered_expired_and_foreign_links_pause_nothing(
    client: Client,
    resources: Resources,
    settings: Settings,
    tokens: TokenService,
    make_user: MakeUser,
    accept: str,
) -> None:
    owner, other = await make_user(), await make_user()
    schedule_id, good = await _link(resources, settings, tokens, owner.user_id)
    head, payload, signature = good.rsplit("/", 1)[1].split(".")
    tampered = f"/v1/schedule-pause/{head}.{payload}x.{signature}"
    _, expired = await _link(
        resources, settings, tokens, owner.user_id, now=utcnow() - timedelta(days=31)
    )
    _, foreign = await _link(resources, settings, tokens, owner.user_id, owner=other.user_id)
    # A download-link token (another audience) is not a pause link either.
    download = tokens.issue_download(
        owner.user_id, export_id=schedule_id, expires_at=utcnow() + timedelta(days=1), now=utcnow()
    )
    cases = [
        (tampered, 404, "pause_link_not_found"),
        (expired, 410, "pause_link_expired"),
        (foreign, 404, "pause_link_not_found"),
        (f"/v1/schedule-pause/{download}", 404, "pause_link_not_found"),
        ("/v1/schedule-pause/not-a-token", 404, "pause_link_not_found"),
    ]
    for path, status, code in cases:
        for method in ("GET", "POST"):
            response = await client.request(
                method, path, data=ONE_CLICK, headers={**FORM, "Accept": accept}
            )
            assert response.status == status, (path, method)
            if accept == "text/html":
                assert response.content_type == "text/html"
                assert path.rsplit("/", 1)[1] not in await response.text()
            else:
                assert response.content_type == "application/problem+json"
                assert (await response.json())["code"] == code
    schedules = await resources.schedules.list_for_user(owner.user_id)
    assert schedules and not any(s.paused for s in schedules)


async def test_a_link_to_a_deleted_schedule_is_not_found(
    client: Client,
    resources: Resources,
    settings: Settings,
    tokens: TokenService,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    schedule_id, path = await _link(resources, settings, tokens, user.user_id)
    await delete_schedule(resources, user.user_id, schedule_id)
    response = await client.post(path, data=ONE_CLICK, headers=FORM)
    assert response.status == 404
    assert (await response.json())["code"] == "pause_link_not_found"
