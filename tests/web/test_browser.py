"""A person in a browser: Debian's Chromium, headless, driven by Playwright (as in
tests/api/test_swagger_ui.py: never a downloaded browser).

(a) The real email of an export too large to attach; its link opened with no token; the
browser saves the file, whose rows are the ones the CSV oracle expects.
(b) The self-service page: a wrong password, sign-in, an export asked for and followed to
``succeeded`` by a real worker running beside the browser, the file downloaded, a queued
export cancelled, the daily quota's message.

The API and a real arq worker run in this test's event loop; the API listens on a loopback
port for the browser. Every request the browser makes off loopback is refused. Screenshots
land in ``test-artifacts/`` (taken also when a step fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from arq.worker import Worker

from exporter.app import create_app
from exporter.auth import SigningKey, TokenService
from exporter.config import Settings
from exporter.dev.ports import free_port
from exporter.dev.smtp import SmtpSink
from exporter.jobs.worker import build_worker_settings
from exporter.models import JobState
from exporter.resources import Resources, open_resources
from exporter.store.memberships import EXPORT_HEADER
from tests.api.test_swagger_ui import CHROMIUM, CHROMIUM_ARGS, PLAYWRIGHT_MISSING
from tests.conftest import MakeUser, SeedRows
from tests.helpers import RAW_EXPORT_QUERY, TestUser, reference_row

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Route, ViewportSize

try:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright
except ImportError:  # reported by PLAYWRIGHT_MISSING
    pass

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Chromium is not installed (apt-get install chromium; .ci/run does it)",
    ),
    pytest.mark.timeout(120),
    pytest.mark.slow,
]

# ~150 KB of CSV: far over the forced attachment limit, so the file goes by link.
ROWS = 1_500
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1100, "height": 900}


@dataclass
class Live:
    url: str
    settings: Settings
    resources: Resources


@contextlib.asynccontextmanager
async def serve(settings: Settings, tokens: TokenService) -> AsyncIterator[Live]:
    """The API on a loopback port it also names as its public URL (so the links it makes
    point at it), with files over 1 KiB delivered by link and two exports a day."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    live_settings = settings.model_copy(
        update={
            "api": settings.api.model_copy(update={"public_url": url, "port": port}),
            "exports": settings.exports.model_copy(
                update={"attachment_max_bytes": 1024, "max_per_day": 2}
            ),
        }
    )
    runner = web.AppRunner(create_app(live_settings, tokens=tokens), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with open_resources(live_settings) as resources:
            yield Live(url, live_settings, resources)
    finally:
        await runner.cleanup()


@pytest.fixture(name="live")
async def _fix_live(settings: Settings, tokens: TokenService) -> AsyncIterator[Live]:
    async with serve(settings, tokens) as live:
        yield live


@contextlib.asynccontextmanager
async def background_worker(settings: Settings) -> AsyncIterator[Worker]:
    """A real arq worker (not burst) polling the queue while the test goes on."""
    worker = Worker(
        **build_worker_settings(settings, handle_signals=False, poll_delay=0.05, cron_jobs=[])
    )
    task = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if PLAYWRIGHT_MISSING:
        pytest.fail(PLAYWRIGHT_MISSING)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def loopback_only(page: Page, refused: list[str]) -> None:
    async def route(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort()

    await page.route("**/*", route)


async def expected_rows(pg: asyncpg.Connection[Any], user: TestUser) -> list[list[str]]:
    return [list(EXPORT_HEADER)] + [
        reference_row(r) for r in await pg.fetch(RAW_EXPORT_QUERY, user.user_id)
    ]


def rows_of(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


async def save_download(page: Page, go: Any) -> tuple[str, bytes]:
    """Run ``go()`` (a navigation or a click) and return the file the browser saved."""
    async with page.expect_download(timeout=20_000) as info:
        with contextlib.suppress(PlaywrightError):  # "Download is starting" aborts a goto
            await go()
    download = await info.value
    path = await download.path()
    return download.suggested_filename, await asyncio.to_thread(Path(path).read_bytes)


async def snap(page: Page, artifacts: Path, name: str) -> None:
    await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


LINK = re.compile(r"https?://[^\s<>\"]+/v1/(?:downloads/[^\s<>\"]+|exports/[\w-]+/download)")


async def test_the_emailed_link_opens_the_file_in_a_browser_with_no_token(
    live: Live,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
    artifacts: Path,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, ROWS)
    async with aiohttp.ClientSession(base_url=live.url) as http:
        async with http.post(
            "/v1/auth/token", json={"email": user.email, "password": user.password}
        ) as response:
            token = (await response.json())["access_token"]
        async with http.post(
            "/v1/exports", json={"format": "csv"}, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 202
            export_id = (await response.json())["id"]
    worker = Worker(
        **build_worker_settings(
            live.settings, burst=True, poll_delay=0, handle_signals=False, cron_jobs=[]
        )
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    job = await live.resources.jobs.get(export_id)
    assert job is not None and job.status is JobState.SUCCEEDED
    assert job.delivery == "download_link" and job.file_key is not None

    (message,) = smtp_sink.for_export(export_id)
    text = message.get_body(("plain",))
    assert text is not None
    (link,) = set(LINK.findall(text.get_content()))
    assert link.startswith(f"{live.url}/v1/downloads/")
    # The email names the checksum the file must have: the manifest's.
    assert f"SHA-256: {job.sha256}" in " ".join(text.get_content().split())

    refused: list[str] = []
    async with chromium() as browser:
        context = await browser.new_context(accept_downloads=True, viewport=DESKTOP)
        page = await context.new_page()
        await loopback_only(page, refused)
        name, data = await save_download(page, lambda: page.goto(link))
        # The same link, cut short as a mail client might: a page that says what to do.
        broken = await page.goto(link[:-25])
        assert broken is not None and broken.status == 404
        await snap(page, artifacts, "download-link-broken")
        assert "This download link does not work" in await page.inner_text("h1")

    assert name == job.file_name
    assert len(data) == job.byte_size
    assert hashlib.sha256(data).hexdigest() == job.sha256
    assert rows_of(data) == await expected_rows(pg, user)
    again = await live.resources.jobs.get(export_id)
    assert again is not None and again.download_count == 1
    assert refused == []


async def test_the_self_service_page_end_to_end(
    live: Live,
    make_user: MakeUser,
    seed_rows: SeedRows,
    pg: asyncpg.Connection[Any],
    artifacts: Path,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, ROWS)
    refused: list[str] = []
    async with chromium() as browser:
        context = await browser.new_context(accept_downloads=True, viewport=PHONE)
        page = await context.new_page()
        console_errors: list[str] = []
        page.on(
            "console",
            lambda m: console_errors.append(m.text) if m.type == "error" else None,
        )
        await loopback_only(page, refused)
        shot = "page-sign-in"
        try:
            response = await page.goto(live.url + "/")
            assert response is not None and response.status == 200
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            await page.wait_for_selector("#email:focus")
            await snap(page, artifacts, shot)

            # A wrong password says so, next to the form.
            await page.fill("#email", user.email)
            await page.fill("#password", "not-the-password")
            await page.click("#sign-in-button")
            await page.wait_for_selector("#sign-in-error:has-text('Wrong e-mail or password')")
            await snap(page, artifacts, "page-wrong-password")

            shot = "page-signed-in"
            await page.fill("#password", user.password)
            await page.keyboard.press("Enter")  # the keyboard submits the form
            await page.wait_for_selector("#exporter:not([hidden])")
            assert await page.is_hidden("#sign-in")

            # Ask for an export while no worker runs: it waits in the queue.
            shot = "page-export-queued"
            await page.click("#new-export-button")
            await page.wait_for_selector("#current-state:has-text('Waiting to start')")
            assert await page.is_visible("#current-cancel")
            await snap(page, artifacts, shot)

            # A worker starts; the page follows the export to the end.
            shot = "page-export-succeeded"
            async with background_worker(live.settings):
                await page.wait_for_selector(
                    "#current-state:has-text('Ready to download')", timeout=30_000
                )
            assert await page.get_attribute("#progress", "value") == "1"
            assert "rows" in await page.inner_text("#progress-text")
            assert "Your export: Ready to download." in await page.inner_text("#status")
            await snap(page, artifacts, shot)

            shot = "page-downloaded"
            name, data = await save_download(page, lambda: page.click("#current-download"))
            assert name.startswith("memberships-") and name.endswith(".csv")
            assert rows_of(data) == await expected_rows(pg, user)

            # A second export, no worker: cancelled while queued.
            shot = "page-export-cancelled"
            assert await page.is_visible("#exporter")  # the download left the page as it was
            await page.click("#new-export-button")
            await page.wait_for_selector("#current-state:has-text('Waiting to start')")
            await page.click("#current-cancel")
            await page.wait_for_selector("#current-state:has-text('Cancelled')")
            await page.wait_for_selector("#history-rows tr:nth-child(2)")
            await snap(page, artifacts, shot)

            # Two a day: the third is refused with the time to wait.
            shot = "page-quota"
            await page.click("#new-export-button")
            await page.wait_for_selector("#new-export-error:has-text('daily limit')")
            message = await page.inner_text("#new-export-error")
            assert re.search(r"next one in \d+ hours", message), message
            await snap(page, artifacts, shot)

            # The list shows both, newest first, with what can still be done.
            statuses = await page.locator("#history-rows tr td.badge").all_inner_texts()
            assert statuses == ["Cancelled", "Ready to download"]
            await page.set_viewport_size(DESKTOP)
            await snap(page, artifacts, "page-desktop")
        except BaseException:
            await snap(page, artifacts, f"{shot}-failed")
            raise

    jobs = (await live.resources.jobs.list_for_user(user.user_id, limit=10)).jobs
    assert [j.status for j in jobs] == [JobState.CANCELLED, JobState.SUCCEEDED]
    assert jobs[1].download_count == 1
    assert refused == []
    # No CSP violation, no script error; only the refusals the test asked for (401, 429).
    assert [e for e in console_errors if not e.startswith("Failed to load resource")] == []
    assert len(console_errors) == 2


async def test_the_page_stays_signed_in_by_refreshing(
    settings: Settings, signing_key: SigningKey, make_user: MakeUser, artifacts: Path
) -> None:
    """Access tokens of two seconds and no leeway: the next call gets a 401, the page
    refreshes once and retries; its timer refreshes again before the next expiry.

    Two, not one: ``iat`` is whole seconds, so a one-second token issued at x.9 s is dead at
    x+1, and on a busy machine the retry after the refresh got its own 401 and signed the
    page out. Two seconds leave the retry at least one."""
    short = settings.model_copy(
        update={"jwt": settings.jwt.model_copy(update={"access_ttl_s": 2, "leeway_s": 0})}
    )
    user = await make_user()
    async with serve(short, TokenService(short.jwt, signing_key)) as live, chromium() as browser:
        page = await browser.new_page(viewport=DESKTOP)
        calls: list[tuple[str, int]] = []

        async def seen(response: Any) -> None:
            calls.append((urlsplit(response.url).path, response.status))

        page.on("response", seen)
        await page.goto(live.url + "/")
        await page.fill("#email", user.email)
        await page.fill("#password", user.password)
        await page.click("#sign-in-button")
        await page.wait_for_selector("#exporter:not([hidden])")
        await asyncio.sleep(2.1)  # the access token is now expired
        await page.click("#refresh-list")
        await page.wait_for_function("document.querySelector('#history-empty').hidden === false")
        for _ in range(100):  # the timer fires 5 s after each refresh (its floor)
            if sum(1 for c in calls if c == ("/v1/auth/refresh", 200)) >= 2:
                break
            await asyncio.sleep(0.1)
        assert await page.is_visible("#exporter")  # still signed in
        await snap(page, artifacts, "page-after-refresh")

    lists = [status for path, status in calls if path == "/v1/exports"]
    # The page's first 401 may come from its other call at sign-in (the monthly exports
    # list) when the machine is slow: either way it was refreshed and retried.
    api = [s for p, s in calls if p in ("/v1/exports", "/v1/export-schedules")]
    assert 401 in api and lists[-1] == 200
    assert sum(1 for c in calls if c == ("/v1/auth/refresh", 200)) >= 2
    assert ("/v1/auth/refresh", 401) not in calls
