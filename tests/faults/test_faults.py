"""Fault injection: the API and workers run as real processes against real services, and
each test breaks one thing the way production breaks it (issue #5)."""

from __future__ import annotations

import csv
import gzip
import io
import signal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.aws import open_dynamo
from exporter.config import Settings
from exporter.dev.dynamodb import start_dynamodb
from exporter.dev.ports import free_port
from exporter.models import ExportJob, JobState, User
from exporter.queue import QueueEntry
from exporter.resources import Resources
from exporter.store.jobs import JobStore
from exporter.store.tables import create_tables
from tests.faults.conftest import BIG_EXPORT_ROWS, Api, MakeUsers, create_users
from tests.faults.stack import FaultySmtp, PrivateRedis, Processes, kill_hard, wait_until

pytestmark = pytest.mark.faults

COPY_RUNNING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND state = 'active' AND query LIKE 'COPY%' AND pid <> pg_backend_pid()"
)


async def streaming_backend(pg: asyncpg.Connection[Any]) -> int:
    """The PostgreSQL backend of an export that is streaming right now."""
    found: list[int] = []

    async def copy_seen() -> bool:
        found[:] = [r["pid"] for r in await pg.fetch(COPY_RUNNING)]
        return bool(found)

    await wait_until(copy_seen, timeout_s=60, every_s=0.005)
    return found[0]


async def finished(jobs: JobStore, export_id: str, *, timeout_s: float = 90) -> ExportJob:
    """The job once it reached a final state."""
    job: ExportJob | None = None

    async def terminal() -> bool:
        nonlocal job
        job = await jobs.get(export_id)
        return job is not None and job.status.is_terminal

    await wait_until(terminal, timeout_s=timeout_s, every_s=0.2)
    assert job is not None
    return job


def gzip_csv_ids(message: EmailMessage) -> list[str]:
    (part,) = list(message.iter_attachments())
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    reader = csv.reader(io.StringIO(gzip.decompress(payload).decode(), newline=""))
    next(reader)  # header
    return [row[0] for row in reader]


async def start(procs: Processes, api: Api, **worker_env: str) -> Any:
    await procs.start_api()
    api.base = procs.api_url
    return procs.start_worker(**worker_env)


def assert_complete_once(smtp: FaultySmtp, job: ExportJob) -> None:
    """Succeeded, one email, every row exactly once."""
    assert job.status is JobState.SUCCEEDED, (job.error_code, job.error_message)
    (message,) = smtp.for_export(job.job_id)
    ids = gzip_csv_ids(message)
    assert len(ids) == BIG_EXPORT_ROWS == len(set(ids)) == job.row_count


async def test_a_worker_killed_mid_export_is_replaced_and_the_export_delivered_once(
    procs: Processes,
    api: Api,
    resources: Resources,
    big_user: User,
    faulty_smtp: FaultySmtp,
    pg: asyncpg.Connection[Any],
) -> None:
    worker = await start(procs, api)
    status, body = await api.create(big_user, "csv.gz")
    assert status == 202

    await streaming_backend(pg)
    kill_hard(worker)
    procs.start_worker()

    job = await finished(resources.jobs, body["id"])
    assert_complete_once(faulty_smtp, job)
    assert job.attempts == 2


async def test_sigterm_mid_export_hands_the_job_to_the_next_worker(
    procs: Processes,
    api: Api,
    resources: Resources,
    big_user: User,
    faulty_smtp: FaultySmtp,
    pg: asyncpg.Connection[Any],
) -> None:
    # No grace at all: the running export is cancelled, which is the worst case.
    worker = await start(procs, api, EXPORTER_WORKER__SHUTDOWN_GRACE_S="0")
    status, body = await api.create(big_user, "csv.gz")
    assert status == 202
    await streaming_backend(pg)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0

    left = await resources.jobs.get(body["id"])
    assert left is not None and left.status is JobState.IN_PROGRESS  # to re-run, not failed
    assert await resources.queue.probe(body["id"]) == QueueEntry(queued=True, running=False)
    assert faulty_smtp.for_export(body["id"]) == []
    procs.start_worker()
    assert_complete_once(faulty_smtp, await finished(resources.jobs, body["id"]))


async def test_sigterm_with_grace_lets_the_running_export_finish(
    procs: Processes,
    api: Api,
    resources: Resources,
    big_user: User,
    faulty_smtp: FaultySmtp,
    pg: asyncpg.Connection[Any],
) -> None:
    worker = await start(procs, api, EXPORTER_WORKER__SHUTDOWN_GRACE_S="60")
    status, body = await api.create(big_user, "csv.gz")
    assert status == 202
    await streaming_backend(pg)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0

    job = await resources.jobs.get(body["id"])
    assert job is not None
    assert_complete_once(faulty_smtp, job)
    assert job.attempts == 1


async def test_a_killed_database_backend_is_retried_into_one_complete_file(
    procs: Processes,
    api: Api,
    resources: Resources,
    big_user: User,
    faulty_smtp: FaultySmtp,
    pg: asyncpg.Connection[Any],
) -> None:
    await start(procs, api)
    status, body = await api.create(big_user, "csv.gz")
    assert status == 202

    backend = await streaming_backend(pg)
    assert await pg.fetchval("SELECT pg_terminate_backend($1)", backend)

    job = await finished(resources.jobs, body["id"])
    assert_complete_once(faulty_smtp, job)
    assert job.attempts == 2


async def test_redis_restarted_empty_loses_no_export(
    procs: Processes,
    api: Api,
    resources: Resources,
    make_users: MakeUsers,
    faulty_smtp: FaultySmtp,
    tmp_path: Path,
) -> None:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        procs.env["EXPORTER_REDIS__URL"] = redis.url
        await procs.start_api()
        api.base = procs.api_url
        users = await make_users(6)
        accepted = []
        for user in users[:5]:  # queued while no worker runs
            status, body = await api.create(user)
            assert status == 202
            accepted.append(body["id"])

        redis.kill()  # everything queued is gone with it
        redis.start()
        procs.start_worker()
        status, body = await api.create(users[5])  # the API reconnected by itself
        assert status == 202
        accepted.append(body["id"])

        for export_id in accepted:
            job = await finished(resources.jobs, export_id)
            assert job.status is JobState.SUCCEEDED
            assert len(faulty_smtp.for_export(export_id)) == 1
    finally:
        procs.stop_all()
        redis.kill()


async def test_smtp_refusing_connections_for_a_while_delays_but_delivers(
    procs: Processes,
    api: Api,
    resources: Resources,
    make_users: MakeUsers,
    faulty_smtp: FaultySmtp,
) -> None:
    (user,) = await make_users(1)
    faulty_smtp.down()
    await start(procs, api)
    status, body = await api.create(user)
    assert status == 202

    async def retried_twice() -> bool:
        job = await resources.jobs.get(body["id"])
        return job is not None and job.attempts >= 2

    await wait_until(retried_twice, timeout_s=30)
    faulty_smtp.up()

    job = await finished(resources.jobs, body["id"])
    assert job.status is JobState.SUCCEEDED and job.attempts >= 2
    assert len(faulty_smtp.for_export(body["id"])) == 1


async def test_smtp_throttling_is_waited_out(
    procs: Processes,
    api: Api,
    resources: Resources,
    make_users: MakeUsers,
    faulty_smtp: FaultySmtp,
) -> None:
    (user,) = await make_users(1)
    faulty_smtp.handler.throttle_next = 2  # SES: "454 Throttling failure"
    await start(procs, api)
    status, body = await api.create(user)
    assert status == 202

    job = await finished(resources.jobs, body["id"])
    assert job.status is JobState.SUCCEEDED and job.attempts == 3
    assert faulty_smtp.handler.data_seen == 3
    assert len(faulty_smtp.for_export(body["id"])) == 1


async def test_a_rejected_recipient_is_final_at_once_without_a_retry_storm(
    procs: Processes,
    api: Api,
    resources: Resources,
    make_users: MakeUsers,
    faulty_smtp: FaultySmtp,
) -> None:
    (user,) = await make_users(1)
    faulty_smtp.handler.reject_recipients = True  # 550: the mailbox does not exist
    await start(procs, api)
    status, body = await api.create(user)
    assert status == 202

    job = await finished(resources.jobs, body["id"])
    # The file is stored, so the export succeeded: the owner downloads it from the page,
    # which says why no email came.
    assert job.status is JobState.SUCCEEDED and job.delivery == "undelivered"
    assert job.delivery_error_code == "recipient_refused" and job.file_key is not None
    assert job.attempts == 1
    # A few sweeps later still nobody has tried again (no notice either: it would bounce).
    await procs_idle(seconds=5)
    assert faulty_smtp.handler.rcpt_seen == 1
    after = await resources.jobs.get(body["id"])
    assert after is not None and after.status is JobState.SUCCEEDED and after.attempts == 1


async def procs_idle(*, seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_dynamodb_down_at_request_time_is_a_503_and_nothing_is_queued(
    procs: Processes,
    api: Api,
    resources: Resources,
    fault_settings: Settings,
    faulty_smtp: FaultySmtp,
    tmp_path: Path,
) -> None:
    port = free_port()
    data = tmp_path / "dynamodb"
    data.mkdir()
    dynamo = start_dynamodb(port, db_path=data, log_path=tmp_path / "dynamodb.log")
    try:
        private = fault_settings.dynamo.model_copy(update={"endpoint_url": dynamo.endpoint_url})
        async with open_dynamo(private) as client:
            await create_tables(client, private)
            (user,) = await create_users(
                fault_settings.model_copy(update={"dynamo": private}), client, 1
            )
        procs.env["EXPORTER_DYNAMO__ENDPOINT_URL"] = dynamo.endpoint_url
        await start(procs, api)

        dynamo.stop()
        status, problem = await api.create(user)
        assert status == 503 and problem["code"] == "store_unavailable"
        queued = await resources.queue.redis.zrange(fault_settings.redis.queue_name, 0, -1)
        # Only the cron jobs' entries (sweep_jobs:<time>); export messages are UUIDs.
        assert [m for m in queued if b":" not in m] == []

        dynamo = start_dynamodb(port, db_path=data, log_path=tmp_path / "dynamodb.log")
        status, body = await api.create(user)
        assert status == 202
        async with open_dynamo(private) as client:
            job = await finished(JobStore(client, private), body["id"])
        assert job.status is JobState.SUCCEEDED
        assert len(faulty_smtp.for_export(body["id"])) == 1
    finally:
        procs.stop_all()
        dynamo.stop()
