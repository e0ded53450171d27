"""Swagger UI in a real browser: Debian's Chromium, headless, driven by Playwright.

The API listens on a loopback port (a real ``AppRunner``/``TCPSite``, so the browser can
reach it). The browser signs in through **Authorize**, runs **Try it out** on
``POST /v1/exports`` and must see a 202; a screenshot lands in ``test-artifacts/``, also
when a step fails (it shows where the page stood). Every request the page makes to anything
but this server is refused, so nothing leaves loopback.

Playwright is a dev dependency (``make venv`` installs it): without it the test fails and
says so. Only a machine without Chromium skips it (``.ci/run`` installs Debian's).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

if TYPE_CHECKING:
    from playwright.async_api import Route, ViewportSize

try:
    from playwright.async_api import async_playwright
except ImportError as exc:  # a broken dev install: fail this test and say why, never skip
    PLAYWRIGHT_MISSING: str | None = (
        f"playwright is not installed ({exc}); it is a dev dependency: run `make venv` "
        "(pip install -e '.[dev]')"
    )
else:
    PLAYWRIGHT_MISSING = None

from exporter.app import create_app
from exporter.auth import TokenService
from exporter.config import Settings
from exporter.resources import Resources
from tests.conftest import MakeUser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that keep Debian's Chromium quiet and offline when run as root in a container.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Swagger UI's element id for POST /v1/exports (tag "exports", path-derived operation id).
OPERATION = "#operations-exports-post_v1_exports"
VIEWPORT: ViewportSize = {"width": 1280, "height": 1000}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its signature and IHDR chunk (fails otherwise)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Chromium is not installed (apt-get install chromium; .ci/run does it)",
    ),
    pytest.mark.timeout(90),
]


@pytest.fixture(name="live_api")
async def _fix_live_api(settings: Settings, tokens: TokenService) -> AsyncIterator[str]:
    """The API on a free loopback port; yields its base URL."""
    runner = web.AppRunner(create_app(settings, tokens=tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_try_it_out_creates_an_export_from_swagger_ui(
    live_api: str,
    make_user: MakeUser,
    resources: Resources,
    artifacts: Path,
) -> None:
    if PLAYWRIGHT_MISSING:
        pytest.fail(PLAYWRIGHT_MISSING)
    screenshot = artifacts / "swagger-ui-create-export.png"
    full_page = artifacts / "swagger-ui-create-export-full.png"
    user = await make_user()
    async with (
        aiohttp.ClientSession(base_url=live_api) as http,
        http.post(
            "/v1/auth/token", json={"email": user.email, "password": user.password}
        ) as response,
    ):
        assert response.status == 200
        token = (await response.json())["access_token"]

    refused: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport=VIEWPORT)

            async def loopback_only(route: Route) -> None:
                if urlsplit(route.request.url).netloc == urlsplit(live_api).netloc:
                    await route.continue_()
                else:
                    refused.append(route.request.url)
                    await route.abort()

            await page.route("**/*", loopback_only)
            try:
                await page.goto(f"{live_api}/api/docs")
                await page.wait_for_selector(OPERATION, timeout=20_000)

                # Authorize: paste the access token into the bearer scheme.
                await page.click("button.authorize")
                await page.fill(".auth-container input", token)
                await page.click(".auth-container .auth-btn-wrapper button.authorize")
                await page.click(".auth-container .auth-btn-wrapper button.btn-done")

                operation = page.locator(OPERATION)
                await operation.locator(".opblock-summary").click()
                await operation.locator("button.try-out__btn").click()
                await operation.locator("textarea.body-param__text").fill('{"format": "csv"}')
                await operation.locator("button.execute").click()

                responses = operation.locator(".live-responses-table")
                status = responses.locator(".response .response-col_status")
                await status.first.wait_for(timeout=20_000)
                seen_status = (await status.first.inner_text()).strip()
                body_text = await responses.locator(
                    ".response-col_description pre"
                ).first.inner_text()
                await responses.scroll_into_view_if_needed()
            finally:
                # Whatever happened above: a wait that timed out leaves a picture of why.
                await page.screenshot(path=str(screenshot))
                await page.screenshot(path=str(full_page), full_page=True)
        finally:
            await browser.close()

    assert png_size(screenshot) == (VIEWPORT["width"], VIEWPORT["height"])
    assert png_size(full_page)[0] == VIEWPORT["width"]
    assert seen_status == "202"
    created: dict[str, Any] = json.loads(body_text)
    assert created["status"] == "queued"
    job = await resources.jobs.get(created["id"])
    assert job is not None and job.user_id == user.user_id
    # Swagger UI asked for nothing outside this server (it would have been refused).
    assert refused == []
