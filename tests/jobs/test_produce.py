"""Rows -> file (jobs/produce.py), seen where users see it: exactly the user's rows, read
from one snapshot (of the replica when there is one), as CSV or gzipped CSV, with an
optional byte order mark."""

from __future__ import annotations

import csv
import io
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from exporter.config import Settings
from exporter.dev.smtp import SmtpSink
from exporter.models import ExportMessageV1, JobState, utcnow
from exporter.resources import Resources, open_resources
from exporter.store.memberships import EXPORT_HEADER
from exporter.store.seed import seed_memberships
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import attachment_rows, deliver, expected_rows, login, new_job


async def test_requested_export_is_emailed_with_exactly_the_users_rows(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
) -> None:
    owner, stranger = await make_user(), await make_user()
    await seed_rows(owner.user_id, 2500)
    await seed_rows(stranger.user_id, 300)
    headers = await login(client, owner)

    created = await client.post("/v1/exports", json={"format": "csv"}, headers=headers)
    assert created.status == 202
    export_id = (await created.json())["id"]

    worker = await run_worker()
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0

    job = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert job["status"] == "succeeded"
    assert job["row_count"] == 2500
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    assert job["delivery"] == "email_attachment"

    (message,) = smtp_sink.for_export(export_id)
    assert message["To"] == owner.email
    assert "2,500 rows" in message["Subject"]
    (part,) = list(message.iter_attachments())
    assert part.get_filename() == f"memberships-{utcnow():%Y-%m-%d}.csv"
    assert part.get_content_type() == "text/csv"
    body, html = message.get_body(("plain",)), message.get_body(("html",))
    assert body is not None and "export of your memberships" in body.get_content()
    assert html is not None and "2,500 (plus one header row)" in html.get_content()

    rows = attachment_rows(message)
    assert rows[0] == list(EXPORT_HEADER)
    assert rows[1:] == await expected_rows(pg, owner.user_id)
    assert job["byte_size"] == len(part.get_payload(decode=True))


async def test_export_of_a_user_without_memberships_is_header_only(
    resources: Resources, make_user: MakeUser, run_worker: RunWorker, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))

    await run_worker()

    finished = await resources.jobs.get(job.job_id)
    assert finished is not None and finished.status is JobState.SUCCEEDED
    assert finished.row_count == 0
    (message,) = smtp_sink.for_export(job.job_id)
    assert attachment_rows(message) == [list(EXPORT_HEADER)]


async def test_csv_gz_export_arrives_gzipped_and_decompresses_to_the_same_rows(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
) -> None:
    import gzip

    user = await make_user()
    await seed_rows(user.user_id, 1200)
    headers = await login(client, user)
    created = await client.post("/v1/exports", json={"format": "csv.gz"}, headers=headers)
    assert created.status == 202
    export_id = (await created.json())["id"]

    await run_worker()

    (message,) = smtp_sink.for_export(export_id)
    (part,) = list(message.iter_attachments())
    assert part.get_content_type() == "application/gzip"
    assert part.get_filename() == f"memberships-{utcnow():%Y-%m-%d}.csv.gz"
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    rows = list(csv.reader(io.StringIO(gzip.decompress(payload).decode(), newline="")))
    assert rows[0] == list(EXPORT_HEADER)
    assert rows[1:] == await expected_rows(pg, user.user_id)


async def test_with_a_replica_configured_the_export_reads_the_replica_only(
    settings: Settings,
    make_user: MakeUser,
    seed_rows: SeedRows,
    replica_dsn: str,
    smtp_sink: SmtpSink,
) -> None:
    # The replica holds different rows for the same user than the primary, so the email
    # shows where the export read from.
    user = await make_user()
    await seed_rows(user.user_id, 3)
    replica = await asyncpg.connect(replica_dsn)
    try:
        await seed_memberships(replica, user.user_id, 5)
        expected = await expected_rows(replica, user.user_id)
    finally:
        await replica.close()
    with_replica = settings.model_copy(
        update={
            "postgres": settings.postgres.model_copy(update={"replica_dsn": SecretStr(replica_dsn)})
        }
    )

    async with open_resources(with_replica) as resources:
        assert resources.pg_export is not resources.pg
        job = await new_job(resources, user.user_id)
        outcome = await deliver(resources, job, user.user_id)
    async with open_resources(with_replica, export_reads=False) as api_side:
        assert api_side.pg_export is api_side.pg  # the API never connects to the replica

    assert outcome is not None and outcome.row_count == 5
    (message,) = smtp_sink.for_export(job.job_id)
    assert attachment_rows(message)[1:] == expected


async def test_the_bom_option_reaches_the_file(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    job = await new_job(resources, user.user_id, bom=True)

    await deliver(resources, job, user.user_id)

    (message,) = smtp_sink.for_export(job.job_id)
    (part,) = list(message.iter_attachments())
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert payload.startswith(b"\xef\xbb\xbfmembership_id,")
