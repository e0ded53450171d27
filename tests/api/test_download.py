"""GET /v1/exports/{id}/download: a fresh signed redirect for the owner, 410 once expired,
409 while there is nothing to download. (404 for strangers is pinned, for every route, by
test_authorization.py.)"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp.test_utils import TestClient

from exporter.keys import RESOURCES
from exporter.models import ExportFormat, ExportJob, JobState, utcnow
from exporter.resources import Resources
from tests.conftest import MakeUser
from tests.helpers import TestUser, login

Client = TestClient[Any, Any]
CONTENT = "id,name\r\n1,Zoë\r\n".encode()


async def stored_export(
    resources: Resources,
    user: TestUser,
    *,
    status: JobState = JobState.SUCCEEDED,
    with_file: bool = True,
    file_expires_in: timedelta = timedelta(days=7),
) -> ExportJob:
    now = utcnow()
    job = ExportJob.new(user_id=user.user_id, fmt=ExportFormat.CSV, now=now, retention_s=86_400)
    fields: dict[str, Any] = {"status": status, "file_name": "memberships-2026-11-27.csv"}
    if with_file:
        key = resources.files.key_for(job.job_id, "memberships-2026-11-27.csv")
        await resources.files.upload(
            key, io.BytesIO(CONTENT), size=len(CONTENT), content_type="text/csv"
        )
        fields |= {
            "file_key": key,
            "file_expires_at": now + file_expires_in,
            "delivery": "download_link",
        }
    else:
        fields["delivery"] = "email_attachment"
    job = job.replace(**fields)
    await resources.jobs.create(job)
    return job


async def test_the_owner_is_redirected_to_a_fresh_signed_url_of_the_file(
    client: Client, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = await login(client, user)
    job = await stored_export(client.app[RESOURCES], user)

    response = await client.get(
        f"/v1/exports/{job.job_id}/download", headers=headers, allow_redirects=False
    )

    assert response.status == 302
    assert response.headers["Cache-Control"] == "no-store"
    location = response.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["60"]
    assert job.job_id in urlsplit(location).path
    async with aiohttp.ClientSession() as http, http.get(location) as file:
        assert file.status == 200
        assert await file.read() == CONTENT
    again = await client.get(
        f"/v1/exports/{job.job_id}/download", headers=headers, allow_redirects=False
    )
    assert again.status == 302  # a new URL each time; none is stored


async def test_the_job_links_to_its_download_while_it_has_one(
    client: Client, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = await login(client, user)
    job = await stored_export(client.app[RESOURCES], user)

    body = await (await client.get(f"/v1/exports/{job.job_id}", headers=headers)).json()

    assert body["links"]["download"] == f"/v1/exports/{job.job_id}/download"
    assert body["delivery"] == "download_link"
    assert body["download_expires_at"] is not None


async def test_an_expired_export_answers_410(client: Client, make_user: MakeUser) -> None:
    user = await make_user()
    headers = await login(client, user)
    resources = client.app[RESOURCES]
    expired = await stored_export(resources, user, status=JobState.EXPIRED, with_file=False)
    past_due = await stored_export(resources, user, file_expires_in=timedelta(seconds=-1))

    for job in (expired, past_due):
        response = await client.get(f"/v1/exports/{job.job_id}/download", headers=headers)
        assert response.status == 410
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "export_expired"


async def test_nothing_to_download_answers_409_with_the_reason(
    client: Client, make_user: MakeUser
) -> None:
    user = await make_user()
    headers = await login(client, user)
    resources = client.app[RESOURCES]
    running = await stored_export(resources, user, status=JobState.IN_PROGRESS, with_file=False)
    attached = await stored_export(resources, user, with_file=False)

    codes = []
    for job in (running, attached):
        response = await client.get(f"/v1/exports/{job.job_id}/download", headers=headers)
        assert response.status == 409
        codes.append((await response.json())["code"])
    assert codes == ["export_not_ready", "no_download"]
    body = await (await client.get(f"/v1/exports/{attached.job_id}", headers=headers)).json()
    assert "download" not in body["links"]
