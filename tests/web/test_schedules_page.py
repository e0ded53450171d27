"""The self-service page's monthly export section in headless Chromium (as test_browser.py):
set one up in the browser's time zone, see its next date, an unknown time zone's precise
message, pause, resume, delete. Every request off loopback is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.schedules.model import PauseReason, Schedule
from tests.api.test_swagger_ui import CHROMIUM
from tests.conftest import MakeUser
from tests.web.test_browser import Live, _fix_live, chromium, loopback_only, snap  # noqa: F401 - the live fixture

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed"),
    pytest.mark.timeout(120),
    pytest.mark.slow,
]


async def test_a_monthly_export_is_set_up_paused_resumed_and_deleted_on_the_page(
    live: Live, make_user: MakeUser, artifacts: Path
) -> None:
    user = await make_user()
    refused: list[str] = []
    async with chromium() as browser:
        context = await browser.new_context(timezone_id="America/New_York")
        page = await context.new_page()
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        await loopback_only(page, refused)
        shot = "schedules-sign-in"
        try:
            await page.goto(live.url + "/")
            await page.fill("#email", user.email)
            await page.fill("#password", user.password)
            await page.click("#sign-in-button")
            await page.wait_for_selector("#schedules-empty:not([hidden])")
            # The browser's own time zone is offered.
            assert await page.input_value("#schedule-zone") == "America/New_York"

            shot = "schedules-bad-zone"
            await page.fill("#schedule-zone", "Mars/Olympus_Mons")
            await page.click("#new-schedule-button")
            await page.wait_for_selector("#new-schedule-error:has-text('Unknown time zone')")

            shot = "schedules-created"
            await page.fill("#schedule-zone", "America/New_York")
            await page.select_option("#schedule-day", "last")
            await page.click("#new-schedule-button")
            await page.wait_for_selector("#schedule-rows tr")
            row = await page.locator("#schedule-rows tr").inner_text()
            assert "Last day" in row and "America/New_York" in row and "None yet" in row
            assert await page.inner_text("#new-schedule-error") == ""
            await snap(page, artifacts, shot)
            # The list by user is a global secondary index, which DynamoDB updates after the
            # write (eventually consistent, in AWS as in DynamoDB Local): its id from there,
            # the record itself by key from then on.
            schedule_id = await _only_schedule_of(live, user.user_id)

            shot = "schedules-paused"
            await page.click("#schedule-rows button:has-text('Pause')")
            await page.wait_for_selector("#schedule-rows td:has-text('Paused')")
            await _until_record(
                live, schedule_id, lambda s: s is not None and s.paused_reason is PauseReason.USER
            )

            shot = "schedules-resumed"
            await page.click("#schedule-rows button:has-text('Resume')")
            await page.wait_for_selector("#schedule-rows button:has-text('Pause')")
            await _until_record(live, schedule_id, lambda s: s is not None and not s.paused)

            shot = "schedules-deleted"
            await page.click("#schedule-rows button:has-text('Delete')")
            await page.wait_for_selector("#schedules-empty:not([hidden])")
            await _until_record(live, schedule_id, lambda s: s is None)
        except BaseException:
            await snap(page, artifacts, f"{shot}-failed")
            raise
    assert refused == []
    # Only the refusal the test asked for (the unknown time zone's 422).
    assert [e for e in console_errors if not e.startswith("Failed to load resource")] == []


async def _only_schedule_of(live: Live, user_id: str) -> str:
    """The id of the user's one schedule, once the index by user shows it."""
    for _ in range(100):
        listed = await live.resources.schedules.list_for_user(user_id)
        if listed:
            (schedule,) = listed
            return schedule.schedule_id
        await asyncio.sleep(0.05)
    raise AssertionError("the schedule never appeared in the index by user")


async def _until_record(
    live: Live, schedule_id: str, wanted: Callable[[Schedule | None], bool]
) -> None:
    """The record reaches what the page shows (read by key, within 5 s): the page and this
    test read through different connections and the page's list through an index."""
    for _ in range(100):
        if wanted(await live.resources.schedules.get(schedule_id)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"schedule {schedule_id} is not as the page shows")
