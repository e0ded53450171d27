"""The self-service page's monthly export section in headless Chromium (as test_browser.py):
set one up in the browser's time zone, see its next date, an unknown time zone's precise
message, pause, resume, delete. Every request off loopback is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.schedules.model import PauseReason
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

            shot = "schedules-paused"
            await page.click("#schedule-rows button:has-text('Pause')")
            await page.wait_for_selector("#schedule-rows td:has-text('Paused')")
            (schedule,) = await live.resources.schedules.list_for_user(user.user_id)
            assert schedule.paused_reason is PauseReason.USER

            shot = "schedules-resumed"
            await page.click("#schedule-rows button:has-text('Resume')")
            await page.wait_for_selector("#schedule-rows button:has-text('Pause')")
            (schedule,) = await live.resources.schedules.list_for_user(user.user_id)
            assert not schedule.paused

            shot = "schedules-deleted"
            await page.click("#schedule-rows button:has-text('Delete')")
            await page.wait_for_selector("#schedules-empty:not([hidden])")
            assert await live.resources.schedules.list_for_user(user.user_id) == []
        except BaseException:
            await snap(page, artifacts, f"{shot}-failed")
            raise
    assert refused == []
    # Only the refusal the test asked for (the unknown time zone's 422).
    assert [e for e in console_errors if not e.startswith("Failed to load resource")] == []
