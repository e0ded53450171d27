"""Operator commands on real services: list, show, retry, cancel, queue stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from arq.constants import result_key_prefix
from arq.worker import Worker

from exporter.accounts import create_user
from exporter.cli.main import main
from exporter.config import Settings
from exporter.dev.smtp import SmtpSink
from exporter.exports.lifecycle import CANCELLED_BY_OPERATOR, start_run
from exporter.jobs.worker import build_worker_settings, worker_is_healthy
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.resources import Resources, open_resources
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import login, scraped


async def exporter_cli(settings: Settings, *argv: str) -> int:
    """Run the real ``exporter`` command (it starts its own event loop, so in a thread)."""
    return await asyncio.to_thread(main, list(argv), settings_factory=lambda: settings)


async def new_job(resources: Resources, user_id: str) -> ExportJob:
    job = ExportJob.new(user_id=user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=3600)
    await resources.jobs.create(job)
    return job


async def test_list_filters_by_user_and_status(
    resources: Resources,
    settings: Settings,
    make_user: MakeUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user, other = await make_user(), await make_user()
    queued = await new_job(resources, user.user_id)
    failed = await new_job(resources, user.user_id)
    await resources.jobs.transition(
        failed.job_id, to=JobState.FAILED, now=utcnow(), fields={"error_code": "too_large"}
    )
    await new_job(resources, other.user_id)

    assert await exporter_cli(settings, "jobs", "list", "--user", user.user_id, "--json") == 0
    mine = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [j["id"] for j in mine] == [failed.job_id, queued.job_id]  # newest first
    assert {j["user_id"] for j in mine} == {user.user_id}

    assert (
        await exporter_cli(settings, "jobs", "list", "--user", user.user_id, "--status", "failed")
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("ID")
    assert len(table) == 2 and failed.job_id in table[1] and "too_large" in table[1]

    # Without --user: every user's jobs (a scan), still filtered by state.
    assert (
        await exporter_cli(
            settings, "jobs", "list", "--status", "failed", "--limit", "100000", "--json"
        )
        == 0
    )
    everyone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert failed.job_id in {j["id"] for j in everyone}
    assert {j["status"] for j in everyone} == {"failed"}


async def test_show_tells_the_record_and_the_queue(
    client: TestClient[Any, Any],
    settings: Settings,
    make_user: MakeUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = await make_user()
    headers = await login(client, user)
    export_id = (await (await client.post("/v1/exports", json={}, headers=headers)).json())["id"]
    capsys.readouterr()  # the API's own log lines (structlog prints when unconfigured)

    assert await exporter_cli(settings, "jobs", "show", export_id) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == export_id and shown["status"] == "queued"
    assert shown["user_id"] == user.user_id
    assert shown["queue"]["queued"] is True and shown["queue"]["running"] is False
    assert shown["worker"] is None  # no run yet

    async with open_resources(settings) as resources:
        await resources.queue.mark_worker_alive("host-a:42:cafe", ttl_s=30)
        await start_run(resources.jobs, export_id, worker_id="host-a:42:cafe")
    assert await exporter_cli(settings, "jobs", "show", export_id) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["worker"] == {"id": "host-a:42:cafe", "alive": True}

    assert await exporter_cli(settings, "jobs", "show", str(uuid.uuid4())) == 2
    assert "no export" in capsys.readouterr().err
    assert await exporter_cli(settings, "jobs", "show", "not-a-uuid") == 2
    assert "not an export id" in capsys.readouterr().err


async def test_retry_runs_a_failed_export_again_to_the_email(
    resources: Resources,
    settings: Settings,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An export whose account did not exist yet: a real worker fails it, arq keeps a result.
    user_id = str(uuid.uuid4())
    job = await new_job(resources, user_id)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user_id))
    await run_worker()
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.error_code == "user_unavailable"
    assert await resources.queue.redis.exists(result_key_prefix + job.job_id)

    # The operator fixes the cause, then retries.
    email = f"retry-{uuid.uuid4().hex[:8]}@example.com"
    await create_user(settings, email=email, password=secrets.token_urlsafe(12), user_id=user_id)
    await seed_rows(user_id, 7)
    assert await exporter_cli(settings, "jobs", "retry", job.job_id) == 0
    assert "queued again" in capsys.readouterr().out
    requeued = await resources.jobs.get(job.job_id)
    assert requeued is not None and requeued.status is JobState.QUEUED
    assert requeued.error_code is None and requeued.finished_at is None

    worker = await run_worker()

    assert worker.jobs_complete == 1
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED and done.row_count == 7
    (message,) = smtp_sink.for_export(job.job_id)
    assert message["To"] == email


@pytest.mark.parametrize(
    ("command", "state", "refusal"),
    [
        ("retry", JobState.QUEUED, "only failed exports can be retried"),
        ("cancel", JobState.FAILED, "only queued or running exports can be cancelled"),
    ],
)
async def test_retry_and_cancel_refuse_an_export_in_the_wrong_state(
    resources: Resources,
    settings: Settings,
    make_user: MakeUser,
    capsys: pytest.CaptureFixture[str],
    command: str,
    state: JobState,
    refusal: str,
) -> None:
    job = await new_job(resources, (await make_user()).user_id)
    if state is not JobState.QUEUED:
        await resources.jobs.transition(job.job_id, to=state, now=utcnow())
    assert await exporter_cli(settings, "jobs", command, job.job_id) == 2
    assert refusal in capsys.readouterr().err
    still = await resources.jobs.get(job.job_id)
    assert still is not None and still.status is state


async def test_cancel_stops_a_queued_export_before_any_worker_runs_it(
    client: TestClient[Any, Any],
    resources: Resources,
    settings: Settings,
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    headers = await login(client, user)
    export_id = (await (await client.post("/v1/exports", json={}, headers=headers)).json())["id"]

    assert await exporter_cli(settings, "jobs", "cancel", export_id) == 0
    assert CANCELLED_BY_OPERATOR in capsys.readouterr().out

    job = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert job["status"] == "cancelled" and job["finished_at"]
    assert job["error"]["code"] == CANCELLED_BY_OPERATOR  # the owner sees who stopped it
    worker = await run_worker()
    assert worker.jobs_complete == 0
    assert not smtp_sink.for_export(export_id)

    # Final now: a second cancel is refused and says why.
    assert await exporter_cli(settings, "jobs", "cancel", export_id) == 2
    assert "is cancelled" in capsys.readouterr().err


async def test_cancel_takes_a_running_export_too(
    resources: Resources,
    settings: Settings,
    make_user: MakeUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = await new_job(resources, (await make_user()).user_id)
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())
    assert await exporter_cli(settings, "jobs", "cancel", job.job_id) == 0
    cancelled = await resources.jobs.get(job.job_id)
    assert cancelled is not None and cancelled.status is JobState.CANCELLED


async def test_operator_cancels_are_counted_where_metrics_are_scraped(
    client: TestClient[Any, Any],
    resources: Resources,
    settings: Settings,
    make_user: MakeUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue = {"queue": settings.redis.queue_name}
    for _ in range(2):
        job = await new_job(resources, (await make_user()).user_id)
        assert await exporter_cli(settings, "jobs", "cancel", job.job_id) == 0
    # An owner's cancel is the API's own metric, not an operator's.
    owner = await make_user()
    headers = await login(client, owner)
    export_id = (await (await client.post("/v1/exports", json={}, headers=headers)).json())["id"]
    assert (await client.delete(f"/v1/exports/{export_id}", headers=headers)).status == 200

    # The command's process is gone by now; the count lives in Redis, and the API (like
    # every worker, on its queue refresh) reads it back for the scrape.
    text = await (await client.get("/metrics")).text()
    assert scraped(text, "exporter_operator_cancellations_total", queue) == 2
    capsys.readouterr()
    assert await exporter_cli(settings, "queue", "stats", "--json") == 0
    assert json.loads(capsys.readouterr().out)["operator_cancellations"] == 2


async def test_queue_stats_counts_backlog_and_live_workers(
    client: TestClient[Any, Any],
    settings: Settings,
    make_user: MakeUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A live worker shows up through its health key (one per process). No crons: one that
    # falls due while it runs would sit in the queue and be counted below.
    worker = Worker(
        **build_worker_settings(settings, handle_signals=False, poll_delay=0.05, cron_jobs=[])
    )
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(100):
            if await worker_is_healthy(settings):
                break
            await asyncio.sleep(0.05)
        capsys.readouterr()  # the worker's start-up lines
        assert await exporter_cli(settings, "queue", "stats") == 0
        text = capsys.readouterr().out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    assert "workers alive      1" in text
    assert "oldest ready age   0.0 s" in text

    # With the worker gone, requests wait in the queue (one active export per user).
    for _ in range(3):
        headers = await login(client, await make_user())
        assert (await client.post("/v1/exports", json={}, headers=headers)).status == 202
    capsys.readouterr()  # the API's own log lines

    assert await exporter_cli(settings, "queue", "stats", "--json") == 0
    idle = json.loads(capsys.readouterr().out)
    assert (idle["jobs"], idle["ready"], idle["in_progress"]) == (3, 3, 0)
    assert idle["workers_alive"] == 0
    assert idle["oldest_ready_age_s"] >= 0
