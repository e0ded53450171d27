"""The self-service page's export options (issue 17) in headless Chromium, as test_browser.py:
the formats, columns, statuses, plans and time zones come from the API's OpenAPI document;
the browser's own time zone is preselected; the byte order mark is offered for CSV only; a
422 lands next to the field it names; what is sent is only what differs from the defaults, and
the created export carries exactly that. Every request off loopback is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from exporter.models import ExportFormat
from exporter.selection import COLUMNS, STATUSES, ExportSelection
from tests.api.test_swagger_ui import CHROMIUM
from tests.conftest import MakeUser
from tests.web.test_browser import Live, _fix_live, chromium, loopback_only, snap  # noqa: F401 - the live fixture

if TYPE_CHECKING:
    from playwright.async_api import Page, Request

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed"),
    pytest.mark.timeout(120),
    pytest.mark.slow,
]

ZONE = "Europe/Berlin"


def record_create_bodies(page: Page) -> list[Any]:
    """The JSON body of every ``POST /v1/exports`` the page sends, in order."""
    bodies: list[Any] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/exports"):
            bodies.append(json.loads(request.post_data or "null"))

    page.on("request", seen)
    return bodies


async def sign_in(page: Page, live: Live, email: str, password: str) -> None:
    await page.goto(live.url + "/")
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.click("#sign-in-button")
    await page.wait_for_selector("#exporter:not([hidden])")
    # The choices are filled from the OpenAPI document once it has arrived.
    await page.wait_for_selector("input[name=format][value=xlsx]")


async def test_an_xlsx_export_of_two_columns_and_one_status_in_berlin_time(
    live: Live, make_user: MakeUser, artifacts: Path
) -> None:
    user = await make_user()
    refused: list[str] = []

    async with chromium() as browser:
        context = await browser.new_context(timezone_id=ZONE)
        page = await context.new_page()
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        sent = record_create_bodies(page)
        await loopback_only(page, refused)
        shot = "options-sign-in"
        try:
            await sign_in(page, live, user.email, user.password)

            # Every format the API takes, each with its one-line hint; CSV first and chosen.
            values = await page.eval_on_selector_all(
                "input[name=format]", "els => els.map(e => e.value)"
            )
            assert values == [f.value for f in ExportFormat]
            assert await page.is_checked("input[name=format][value=csv]")
            assert "Excel workbook (.xlsx)" in await page.inner_text("#format-choices")
            assert "pandas" in await page.inner_text("#format-choices")
            hint = await page.get_attribute("input[name=format][value=parquet]", "aria-describedby")
            assert hint is not None and "polars" in await page.inner_text(f"#{hint}")

            # The byte order mark is a CSV matter.
            assert await page.is_visible("#bom")
            await page.check("input[name=format][value=xlsx]")
            assert await page.is_hidden("#bom")
            await page.check("input[name=format][value='csv.gz']")
            assert await page.is_visible("#bom")
            await page.check("input[name=format][value=xlsx]")
            assert await page.is_hidden("#bom")

            # Columns and rows: collapsed until opened; every column ticked, in file order;
            # the browser's own time zone chosen.
            assert await page.is_hidden("#column-choices")
            await page.click("#options summary")
            columns = await page.eval_on_selector_all(
                "input[name=column]", "els => els.map(e => [e.value, e.checked])"
            )
            assert columns == [[c, True] for c in COLUMNS]
            statuses = await page.eval_on_selector_all(
                "input[name=status]", "els => els.map(e => [e.value, e.checked])"
            )
            assert statuses == [[s, False] for s in STATUSES]
            assert await page.input_value("#time-zone") == ZONE
            await snap(page, artifacts, "options-open")

            for column in COLUMNS:
                if column not in ("organization_name", "status"):
                    await page.uncheck(f"input[name=column][value={column}]")
            await page.check("input[name=status][value=active]")

            # A range the wrong way round: the API's 422, next to the dates, announced.
            shot = "options-422"
            await page.fill("#started-from", "2026-03-01")
            await page.fill("#started-to", "2026-01-31")
            await page.click("#new-export-button")
            await page.wait_for_selector("#started-error:has-text('Started between')")
            message = await page.inner_text("#started-error")
            assert "from must not be after to" in message, message
            assert await page.get_attribute("#started-error", "role") == "alert"
            described = await page.get_attribute("#started-from", "aria-describedby") or ""
            assert "started-error" in described.split()
            assert await page.get_attribute("#started-from", "aria-invalid") == "true"
            assert "next to them" in await page.inner_text("#new-export-error")
            assert await page.inner_text("#columns-error") == ""
            await snap(page, artifacts, shot)
            assert (await live.resources.jobs.list_for_user(user.user_id, limit=10)).jobs == []

            # Without the dates it goes through; the messages go away.
            shot = "options-created"
            await page.fill("#started-from", "")
            await page.fill("#started-to", "")
            await page.click("#new-export-button")
            await page.wait_for_selector("#current:not([hidden])")
            await page.wait_for_selector("#history-rows tr")
            assert await page.inner_text("#started-error") == ""
            assert await page.get_attribute("#started-from", "aria-invalid") is None
            summary = "2 columns (organization_name, status); status active; times in Europe/Berlin"
            assert await page.inner_text("#current-selection") == f"Excel: {summary}"
            row = page.locator("#history-rows tr").first
            assert await row.locator("td[data-label=Format]").inner_text() == "Excel"
            assert await row.locator("td[data-label=Contents]").inner_text() == summary
            await snap(page, artifacts, shot)

            # The monthly export offers the same formats.
            scheduled = await page.eval_on_selector_all(
                "#schedule-format option", "els => els.map(e => e.value)"
            )
            assert scheduled == [f.value for f in ExportFormat]
        except BaseException:
            await snap(page, artifacts, f"{shot}-failed")
            raise

    # Only what differs from the defaults was sent, the second time exactly the choices.
    assert sent[-1] == {
        "format": "xlsx",
        "columns": ["organization_name", "status"],
        "status": ["active"],
        "time_zone": ZONE,
    }
    assert sent[0] == {**sent[-1], "started_between": {"from": "2026-03-01", "to": "2026-01-31"}}
    (job,) = (await live.resources.jobs.list_for_user(user.user_id, limit=10)).jobs
    assert job.format is ExportFormat.XLSX and not job.bom
    assert job.selection == ExportSelection(
        columns=("organization_name", "status"), statuses=("active",), time_zone=ZONE
    )
    assert refused == []
    # Only the refusal the test asked for (the 422).
    assert [e for e in console_errors if not e.startswith("Failed to load resource")] == []
    assert len(console_errors) == 1


async def test_a_plain_export_sends_an_empty_body_and_names_no_filters(
    live: Live, make_user: MakeUser
) -> None:
    """The defaults (CSV, every column and row, UTC) send nothing: a browser in UTC asks for
    `{}` and the list says the export holds everything."""
    user = await make_user()
    refused: list[str] = []
    async with chromium() as browser:
        context = await browser.new_context(timezone_id="UTC")
        page = await context.new_page()
        sent = record_create_bodies(page)
        await loopback_only(page, refused)
        await sign_in(page, live, user.email, user.password)
        assert await page.input_value("#time-zone") == "UTC"
        await page.click("#new-export-button")
        await page.wait_for_selector("#history-rows tr")
        contents = page.locator("#history-rows tr td[data-label=Contents]")
        assert await contents.inner_text() == "All columns, every row"
    assert sent == [{}]
    (job,) = (await live.resources.jobs.list_for_user(user.user_id, limit=10)).jobs
    assert job.format is ExportFormat.CSV and job.selection.is_all
    assert refused == []
