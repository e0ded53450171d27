"""The email channel (delivery/email.py): an export too large to attach is uploaded to S3
(multipart), the email links to the download route, and the route hands the owner exactly
the bytes of the export; a small one is attached. A tiny attachment limit forces the link
path with small data."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import create_app
from exporter.auth import TokenService
from exporter.config import Settings
from exporter.delivery.email import encoded_message_size
from exporter.dev.ports import free_port
from exporter.dev.smtp import SmtpSink
from exporter.errors import ConditionFailed, ExportFailed, RetryLater
from exporter.jobs.run import _fail as fail_export
from exporter.keys import RESOURCES
from exporter.models import ExportFormat, ExportJob, JobState, utcnow
from exporter.resources import Resources, open_resources
from exporter.store.memberships import EXPORT_HEADER
from tests.conftest import MakeUser, SeededJob, SeedRows
from tests.helpers import RAW_EXPORT_QUERY, deliver, login, reference_row

Client = TestClient[Any, Any]


@pytest.fixture(name="tiny_limit_settings")
def _fix_tiny_limit_settings(settings: Settings) -> Settings:
    """Attach nothing (the limit is below any real message) and upload in 5 MiB parts."""
    return settings.model_copy(
        update={
            "exports": settings.exports.model_copy(update={"attachment_max_bytes": 1024}),
            "s3": settings.s3.model_copy(update={"part_size_bytes": 5 * 1024 * 1024}),
        }
    )


@pytest.fixture(name="big_resources")
async def _fix_big_resources(tiny_limit_settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(tiny_limit_settings) as resources:
        yield resources


@pytest.fixture(name="big_client")
async def _fix_big_client(
    tiny_limit_settings: Settings, tokens: TokenService
) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(tiny_limit_settings, tokens=tokens))) as client:
        yield client


async def fetch(client: Client, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Follow the download route's redirect the way a browser would."""
    response = await client.get(path, headers=headers, allow_redirects=False)
    if response.status != 302:
        return response.status, await response.read()
    async with aiohttp.ClientSession() as http, http.get(response.headers["Location"]) as file:
        return file.status, await file.read()


@pytest.mark.parametrize("fmt", [ExportFormat.CSV, ExportFormat.CSV_GZ])
async def test_a_large_export_goes_through_s3_and_downloads_byte_for_byte(
    big_client: Client,
    big_resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
    fmt: ExportFormat,
) -> None:
    owner, stranger = await make_user(), await make_user()
    # ~7 MB of CSV: more than one 5 MiB part, so the multipart path runs.
    rows = 32_000 if fmt is ExportFormat.CSV else 2_000
    await seed_rows(owner.user_id, rows)
    headers = await login(big_client, owner)
    created = await big_client.post("/v1/exports", json={"format": fmt.value}, headers=headers)
    assert created.status == 202
    export_id = (await created.json())["id"]

    outcome = await deliver(big_resources, export_id, owner.user_id)

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    job = await (await big_client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert job["delivery"] == "download_link"
    assert job["links"]["download"] == f"/v1/exports/{export_id}/download"
    assert job["download_expires_at"] is not None
    (message,) = smtp_sink.for_export(export_id)
    assert list(message.iter_attachments()) == []
    text = message.get_body(("plain",))
    assert text is not None
    # The one-click capability link (tests/web opens it in a browser), never a presigned URL.
    assert "/v1/downloads/" in text.get_content()
    assert "X-Amz-Signature" not in message.as_string()

    status, body = await fetch(big_client, f"/v1/exports/{export_id}/download", headers)
    assert status == 200
    assert len(body) == job["byte_size"]
    data = gzip.decompress(body) if fmt is ExportFormat.CSV_GZ else body
    parsed = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert parsed[0] == list(EXPORT_HEADER)
    assert parsed[1:] == [reference_row(r) for r in await pg.fetch(RAW_EXPORT_QUERY, owner.user_id)]

    intruder = await login(big_client, stranger)
    denied = await big_client.get(f"/v1/exports/{export_id}/download", headers=intruder)
    assert denied.status == 404


async def uploaded_but_unsent(
    tiny_limit_settings: Settings, resources: Resources, job: ExportJob
) -> ExportJob | None:
    """A first run that uploaded the file (nothing is attached under the tiny limit), then
    found the mail server unreachable and asked to retry later; the record it left."""
    no_smtp = tiny_limit_settings.model_copy(
        update={"smtp": tiny_limit_settings.smtp.model_copy(update={"port": free_port()})}
    )
    async with open_resources(no_smtp) as broken:
        with pytest.raises(RetryLater):
            await deliver(broken, job, job.user_id)
    return await resources.jobs.get(job.job_id)


async def test_a_rerun_after_a_failed_send_overwrites_the_same_object(
    tiny_limit_settings: Settings,
    big_resources: Resources,
    seeded_job: SeededJob,
    smtp_sink: SmtpSink,
) -> None:
    user, job = await seeded_job(50)

    # First run: uploaded, then the mail server is unreachable: retry later.
    uploaded = await uploaded_but_unsent(tiny_limit_settings, big_resources, job)
    assert uploaded is not None and uploaded.status is JobState.IN_PROGRESS
    assert uploaded.file_key is not None  # recorded at once, so cleanup can always find it

    outcome = await deliver(big_resources, job, user.user_id, attempt=2)

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    listing = await big_resources.files._client.list_objects_v2(
        Bucket=big_resources.files.bucket,
        Prefix=f"{big_resources.settings.s3.key_prefix}{job.job_id}/",
    )
    assert [o["Key"] for o in listing["Contents"]] == [uploaded.file_key]
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_small_export_is_still_attached(
    client: Client, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 20)
    headers = await login(client, user)
    created = await client.post("/v1/exports", headers=headers)
    export_id = (await created.json())["id"]
    resources = client.app[RESOURCES]

    await deliver(resources, export_id, user.user_id)

    job = await resources.jobs.get(export_id)
    assert job is not None and job.delivery == "email_attachment"
    (message,) = smtp_sink.for_export(export_id)
    (attached,) = list(message.iter_attachments())
    payload = attached.get_payload(decode=True)
    assert isinstance(payload, bytes)
    # Attached, and also kept: the owner can download it again until it expires.
    assert job.file_key is not None and job.file_expires_at is not None
    stored = await resources.files._client.get_object(
        Bucket=resources.files.bucket, Key=job.file_key
    )
    async with stored["Body"] as body:
        assert await body.read() == payload
    assert job.sha256 == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize(
    ("file_bytes", "limit", "attached"),
    [
        (7 * 1024 * 1024, 10 * 1024 * 1024, True),  # 7 MiB of file is ~9.6 MiB of email
        (8 * 1024 * 1024, 10 * 1024 * 1024, False),  # 8 MiB of file is ~11 MiB: too big
        (0, 1024, False),  # the message itself outweighs a tiny limit
    ],
)
def test_the_attachment_limit_counts_the_base64_encoded_message(
    file_bytes: int, limit: int, attached: bool
) -> None:
    assert (encoded_message_size(file_bytes) <= limit) is attached


def test_the_size_estimate_is_never_below_the_real_message() -> None:
    content = bytes(range(256)) * 4000  # ~1 MB, incompressible
    message = EmailMessage()
    message.set_content("x" * 4000)
    message.add_alternative("<p>" + "x" * 8000 + "</p>", subtype="html")
    message.add_attachment(content, maintype="text", subtype="csv", filename="m.csv")

    assert len(message.as_bytes()) <= encoded_message_size(len(content))


async def test_a_rerun_sends_the_stored_file_attached_when_it_fits_without_a_new_copy(
    tiny_limit_settings: Settings,
    resources: Resources,
    seeded_job: SeededJob,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
) -> None:
    user, job = await seeded_job(50)
    uploaded = await uploaded_but_unsent(tiny_limit_settings, resources, job)
    assert uploaded is not None and uploaded.file_key is not None
    assert uploaded.file_stored_at is not None and uploaded.row_count == 50
    await seed_rows(user.user_id, 5)  # the data changed before the re-run

    # The re-run runs under the normal limit: the stored file fits in the email this time.
    outcome = await deliver(resources, job, user.user_id, attempt=2)

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    done = await resources.jobs.get(job.job_id)
    assert done is not None
    # The file produced before the failed send, not a new COPY of the changed data.
    assert done.delivery == "email_attachment" and done.row_count == 50
    assert done.file_stored_at == uploaded.file_stored_at and done.sha256 == uploaded.sha256
    assert done.file_key == uploaded.file_key  # one object
    listing = await resources.files._client.list_objects_v2(
        Bucket=resources.files.bucket, Prefix=f"{resources.settings.s3.key_prefix}{job.job_id}/"
    )
    assert [o["Key"] for o in listing["Contents"]] == [done.file_key]
    (message,) = smtp_sink.for_export(job.job_id)
    (attached,) = list(message.iter_attachments())
    stored = await resources.files._client.get_object(
        Bucket=resources.files.bucket, Key=done.file_key
    )
    async with stored["Body"] as body:
        assert await body.read() == attached.get_payload(decode=True)


async def test_a_job_whose_email_went_out_is_never_failed(
    resources: Resources, make_user: MakeUser
) -> None:
    # The server accepted the email (email_sent_at written), then the run failed (QUIT
    # refused, the final write lost): failing it would let the cron delete the user's file.
    user = await make_user()
    now = utcnow()
    job = ExportJob.new(
        user_id=user.user_id, fmt=ExportFormat.CSV, now=now, retention_s=3600
    ).replace(
        status=JobState.IN_PROGRESS,
        attempts=1,
        email_sent_at=now,
        row_count=7,
        byte_size=700,
        file_name="memberships.csv",
        delivery="download_link",
        file_key="exports/x/memberships.csv",
        file_expires_at=now + timedelta(days=7),
    )
    await resources.jobs.create(job)

    outcome = await fail_export(
        resources, job.job_id, ExportFailed("smtp_rejected", "QUIT: 554"), started=time.monotonic()
    )

    assert outcome is not None and outcome.status is JobState.SUCCEEDED
    after = await resources.jobs.get(job.job_id)
    assert after is not None
    assert after.status is JobState.SUCCEEDED and after.error_code is None
    assert after.file_key == job.file_key
    with pytest.raises(ConditionFailed):
        await resources.jobs.transition(
            job.job_id, to=JobState.FAILED, now=utcnow(), unsent_only=True
        )
