"""Download links (``GET /v1/downloads/{token}``, ``POST /v1/exports/{id}/download-link``):
they open the owner's file with no sign-in until it expires, work in the moment between the
email and ``succeeded``, stop at once on cancel or expiry, answer 404/410 (never 500) to
anything else, a page to browsers and a problem to API clients, are counted and audited, and
their token reaches no log line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import create_app
from exporter.auth import SigningKey, TokenService
from exporter.config import Settings
from exporter.keys import RESOURCES
from exporter.links import capability_path, capability_url
from exporter.logs import configure_logging
from exporter.models import ExportJob, JobState, utcnow
from exporter.resources import Resources
from tests.api.test_download import CONTENT, stored_export
from tests.conftest import MakeUser
from tests.helpers import TestUser, login, sign_in

Client = TestClient[Any, Any]
BROWSER_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
)


def link_path(url: str) -> str:
    return urlsplit(url).path


async def new_link(client: Client, job: ExportJob, headers: dict[str, str]) -> str:
    response = await client.post(f"/v1/exports/{job.job_id}/download-link", headers=headers)
    assert response.status == 201, await response.text()
    body = await response.json()
    assert response.headers["Cache-Control"] == "no-store"
    assert body["expires_at"].endswith("Z")
    return link_path(body["url"])


async def open_link(client: Client, path: str, accept: str = "*/*") -> aiohttp.ClientResponse:
    return await client.get(path, headers={"Accept": accept}, allow_redirects=False)


async def problem_code(response: aiohttp.ClientResponse) -> str:
    assert response.content_type == "application/problem+json", await response.text()
    code: str = (await response.json())["code"]
    return code


async def test_a_link_opens_the_file_without_sign_in_as_often_as_needed(
    client: Client, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user()
    headers = await login(client, user)
    job = await stored_export(client.app[RESOURCES], user)
    path = await new_link(client, job, headers)
    assert path.startswith("/v1/downloads/")

    for _ in range(2):  # not single-use: mail scanners open links before people do
        response = await open_link(client, path)
        assert response.status == 302
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        location = response.headers["Location"]
        assert "X-Amz-Signature" in location and job.job_id in location
        async with aiohttp.ClientSession() as http, http.get(location) as file:
            assert file.status == 200
            assert await file.read() == CONTENT
            assert file.headers["Content-Disposition"] == (
                'attachment; filename="memberships-2026-11-27.csv"'
            )

    body = await (await client.get(f"/v1/exports/{job.job_id}", headers=headers)).json()
    assert body["download_count"] == 2
    assert body["last_downloaded_at"] is not None
    # The worker's function makes the same kind of link.
    emailed = capability_url(settings, job)
    assert emailed.startswith(f"{settings.api.public_url}/v1/downloads/")
    assert (await open_link(client, link_path(emailed))).status == 302


async def test_the_link_works_between_the_email_and_succeeded(
    client: Client, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user()
    resources = client.app[RESOURCES]
    mailed = await stored_export(resources, user, status=JobState.IN_PROGRESS)
    await resources.jobs.mark_email_sent(mailed.job_id, status=JobState.IN_PROGRESS, now=utcnow())
    unmailed = await stored_export(resources, user, status=JobState.IN_PROGRESS)

    ok = await open_link(client, link_path(capability_url(settings, mailed)))
    early = await open_link(client, link_path(capability_url(settings, unmailed)))

    assert ok.status == 302
    assert early.status == 409 and await problem_code(early) == "export_not_ready"


async def test_cancelling_revokes_the_link_at_once(
    client: Client, make_user: MakeUser, settings: Settings
) -> None:
    user = await make_user()
    headers = await login(client, user)
    resources = client.app[RESOURCES]
    job = await stored_export(resources, user, status=JobState.IN_PROGRESS)
    await resources.jobs.mark_email_sent(job.job_id, status=JobState.IN_PROGRESS, now=utcnow())
    path = link_path(capability_url(settings, job))
    assert (await open_link(client, path)).status == 302

    cancelled = await client.delete(f"/v1/exports/{job.job_id}", headers=headers)
    assert cancelled.status == 200

    response = await open_link(client, path)
    assert response.status == 410 and await problem_code(response) == "export_cancelled"
    again = await client.post(f"/v1/exports/{job.job_id}/download-link", headers=headers)
    assert again.status == 410


async def test_expired_links_and_exports_answer_410(
    client: Client, make_user: MakeUser, tokens: TokenService
) -> None:
    user = await make_user()
    resources = client.app[RESOURCES]
    job = await stored_export(resources, user)
    now = utcnow()
    old = tokens.issue_download(
        user.user_id, export_id=job.job_id, expires_at=now - timedelta(hours=1), now=now
    )
    expired_job = await stored_export(resources, user, status=JobState.EXPIRED, with_file=False)
    past_due = await stored_export(resources, user, file_expires_in=timedelta(seconds=-1))

    expired_link = await open_link(client, capability_path(old))
    assert expired_link.status == 410 and await problem_code(expired_link) == "link_expired"
    for gone in (expired_job, past_due):
        token = tokens.issue_download(
            user.user_id, export_id=gone.job_id, expires_at=now + timedelta(days=1), now=now
        )
        response = await open_link(client, capability_path(token))
        assert response.status == 410 and await problem_code(response) == "export_expired"


def _forged(key: SigningKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid})


async def test_anything_but_a_genuine_link_is_404_never_500(
    client: Client, make_user: MakeUser, tokens: TokenService, signing_key: SigningKey
) -> None:
    owner, other = await make_user(), await make_user()
    resources = client.app[RESOURCES]
    job = await stored_export(resources, owner)
    others_job = await stored_export(resources, other)
    pair = await sign_in(client, owner)
    now = utcnow()
    good = tokens.issue_download(
        owner.user_id, export_id=job.job_id, expires_at=now + timedelta(days=1), now=now
    )
    header, payload, signature = good.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    base = {
        "iss": "https://exporter.local",
        "sub": owner.user_id,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + 3600,
        "jti": "x",
        "export_id": job.job_id,
    }
    stranger_key = SigningKey.generate()
    bad = {
        "tampered signature": f"{header}.{payload}.{flipped}",
        "tampered payload": f"{header}.{payload[:-2]}xx.{signature}",
        "truncated": good[:-20],
        "header only": header,
        "garbage": "not-a-token",
        "dots": "...",
        "too long": "a" * 5000,
        "access token": pair["access_token"],
        "refresh token": pair["refresh_token"],
        "wrong audience": _forged(
            signing_key, {**base, "aud": "exporter-api", "token_type": "download"}
        ),
        "wrong type": _forged(
            signing_key, {**base, "aud": "exporter-api/download", "token_type": "access"}
        ),
        "foreign key": _forged(
            stranger_key, {**base, "aud": "exporter-api/download", "token_type": "download"}
        ),
        # Signed by us, but naming another user's export: the owner check refuses it.
        "another's export": tokens.issue_download(
            owner.user_id, export_id=others_job.job_id, expires_at=base_exp(now), now=now
        ),
        "no such export": tokens.issue_download(
            owner.user_id,
            export_id="00000000-0000-4000-8000-000000000000",
            expires_at=base_exp(now),
            now=now,
        ),
    }
    for name, token in bad.items():
        for accept in ("*/*", "application/json", BROWSER_ACCEPT):
            response = await open_link(client, capability_path(token), accept)
            assert response.status == 404, (name, accept, await response.text())
            if accept == BROWSER_ACCEPT:
                assert response.content_type == "text/html", name
            else:
                assert await problem_code(response) == "link_not_found", name
    assert (await open_link(client, capability_path(good))).status == 302
    # ...and a link is no access token: the API refuses it as a bearer.
    as_bearer = await client.get(
        f"/v1/exports/{job.job_id}", headers={"Authorization": f"Bearer {good}"}
    )
    assert as_bearer.status == 401


def base_exp(now: Any) -> Any:
    return now + timedelta(days=1)


async def test_browsers_get_a_page_and_api_clients_a_problem(
    client: Client, make_user: MakeUser, tokens: TokenService
) -> None:
    user = await make_user()
    resources = client.app[RESOURCES]
    expired = await stored_export(resources, user, status=JobState.EXPIRED, with_file=False)
    now = utcnow()
    token = tokens.issue_download(
        user.user_id, export_id=expired.job_id, expires_at=base_exp(now), now=now
    )
    path = capability_path(token)

    page = await open_link(client, path, BROWSER_ACCEPT)
    assert page.status == 410
    assert page.content_type == "text/html"
    html = await page.text()
    assert "This export has expired" in html and 'href="/"' in html
    assert "<script" not in html and "style=" not in html
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp
    assert "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"

    for accept in ("*/*", "application/json", "application/problem+json", ""):
        response = await client.get(path, headers={"Accept": accept})
        assert response.status == 410
        assert await problem_code(response) == "export_expired"
        assert response.headers["Cache-Control"] == "no-store"
    # A browser that prefers JSON explicitly gets JSON.
    json_first = await open_link(client, path, "application/json, text/html;q=0.5")
    assert json_first.content_type == "application/problem+json"


async def test_the_link_route_for_api_owners(client: Client, make_user: MakeUser) -> None:
    user, stranger = await make_user(), await make_user()
    headers = await login(client, user)
    resources = client.app[RESOURCES]
    attached = await stored_export(resources, user, with_file=False)
    running = await stored_export(resources, user, status=JobState.IN_PROGRESS, with_file=False)
    mine = await stored_export(resources, user)

    codes = []
    for job in (attached, running):
        response = await client.post(f"/v1/exports/{job.job_id}/download-link", headers=headers)
        assert response.status == 409
        codes.append(await problem_code(response))
    assert codes == ["no_download", "export_not_ready"]
    intruder = await login(client, stranger)
    denied = await client.post(f"/v1/exports/{mine.job_id}/download-link", headers=intruder)
    assert denied.status == 404
    anonymous = await client.post(f"/v1/exports/{mine.job_id}/download-link")
    assert anonymous.status == 401


@pytest.fixture(name="debug_logs")
def _fix_debug_logs(settings: Settings) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything logged at DEBUG as production renders it (access log included), and the
    access log's own lines before any processor sees them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(settings.model_copy(update={"log_level": "DEBUG"}))
    structlog.configure(cache_logger_on_first_use=False)
    rendered = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(rendered)
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    access.setLevel(logging.DEBUG)
    raw = io.StringIO()
    raw_handler = logging.StreamHandler(raw)
    access.addHandler(raw_handler)
    yield rendered, raw
    access.removeHandler(raw_handler)
    access.setLevel(access_level)
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_uses_are_audited_and_no_token_reaches_any_log_line(
    debug_logs: tuple[io.StringIO, io.StringIO],
    client: Client,
    make_user: MakeUser,
    tokens: TokenService,
    settings: Settings,
) -> None:
    rendered, raw_access = debug_logs
    user = await make_user()
    headers = await login(client, user)
    resources: Resources = client.app[RESOURCES]
    job = await stored_export(resources, user)
    cancelled = await stored_export(resources, user, status=JobState.CANCELLED)
    now = utcnow()
    path = await new_link(client, job, headers)
    token = path.rsplit("/", 1)[-1]
    others = [
        tokens.issue_download(
            user.user_id, export_id=job.job_id, expires_at=now - timedelta(hours=1), now=now
        ),
        tokens.issue_download(
            user.user_id, export_id=cancelled.job_id, expires_at=base_exp(now), now=now
        ),
    ]

    assert (await open_link(client, path)).status == 302
    assert (await open_link(client, path, BROWSER_ACCEPT)).status == 302
    assert (await open_link(client, path[:-30])).status == 404  # a truncated copy
    assert (await open_link(client, path[:-30], BROWSER_ACCEPT)).status == 404
    for other in others:
        assert (await open_link(client, capability_path(other))).status == 410
        assert (await open_link(client, capability_path(other), BROWSER_ACCEPT)).status == 410
    as_bearer = await client.get(
        f"/v1/exports/{job.job_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert as_bearer.status == 401

    output = rendered.getvalue() + raw_access.getvalue()
    assert "/v1/downloads/" in raw_access.getvalue()  # the access log did run
    assert '"route": "/v1/downloads/{token}"' in output
    for secret in (token, *others):
        for piece in secret.split("."):  # header, claims, signature: none of them
            if len(piece) > 20:
                assert piece not in output
        assert secret[:-30] not in output
    audits = [line for line in output.splitlines() if "audit.export_downloaded" in line]
    assert len(audits) == 2
    assert f'"export_id": "{job.job_id}"' in audits[0]
    assert f'"user_id": "{user.user_id}"' in audits[0]
    assert '"client": "127.0.0.1"' in audits[0] and '"link_id": ' in audits[0]
    stored = await resources.jobs.get(job.job_id)
    assert stored is not None and stored.download_count == 2


async def test_the_audit_line_takes_the_address_our_proxy_saw(
    make_user: MakeUser, settings: Settings
) -> None:
    """Behind the ALB (one trusted hop) the client is the last X-Forwarded-For entry, not
    whatever the caller put further left."""
    proxied = settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"trusted_proxy_hops": 1})}
    )
    user: TestUser = await make_user()
    async with TestClient(TestServer(create_app(proxied))) as behind_alb:
        job = await stored_export(behind_alb.app[RESOURCES], user)
        with structlog.testing.capture_logs() as logs:
            response = await behind_alb.get(
                link_path(capability_url(proxied, job)),
                headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"},
                allow_redirects=False,
            )
    assert response.status == 302
    (event,) = [e for e in logs if e["event"] == "audit.export_downloaded"]
    assert event["client"] == "203.0.113.7"
