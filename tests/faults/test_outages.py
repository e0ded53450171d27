"""Outages of minutes lose nothing (issue 14): the mail service or S3 away for longer than
the old five tries, real worker processes, the shipped retry policy with short timings
(the same code path; the budget is what differs). Each test prints what it measured."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from exporter.exports.view import job_body
from exporter.models import ExportJob, JobState
from exporter.resources import Resources
from tests.faults.conftest import Api, MakeUsers
from tests.faults.proxy import SwitchableProxy
from tests.faults.stack import FaultySmtp, Processes, wait_until
from tests.faults.test_faults import finished, start

pytestmark = pytest.mark.faults

# FAST_WORKER's policy (tests/faults/stack.py): tries every ~0.5 s (base 0.2 s, cap 1 s) and
# at most 8 runs lost to dying workers: an outage of 15 s takes far more tries than that.
OUTAGE_S = 15


async def retries_of(resources: Resources, export_id: str) -> int:
    job = await resources.jobs.get(export_id)
    return 0 if job is None else job.retries


async def test_a_mail_outage_longer_than_any_try_count_delivers_each_export_once(
    procs: Processes, api: Api, resources: Resources, make_users: MakeUsers, faulty_smtp: FaultySmtp
) -> None:
    users = await make_users(3)
    faulty_smtp.down()
    await start(procs, api)
    ids = []
    for user in users:
        status, body = await api.create(user)
        assert status == 202
        ids.append(body["id"])

    down_at = time.monotonic()
    await asyncio.sleep(OUTAGE_S)
    waiting: list[ExportJob] = []
    for export_id in ids:
        # A try comes every ~0.5 s: catch each job between two of them, while it waits.
        seen: list[ExportJob] = []

        async def between_tries(export_id: str = export_id, seen: list[ExportJob] = seen) -> bool:
            job = await resources.jobs.get(export_id)
            seen[:] = [job] if job is not None else []
            return job is not None and job.next_attempt_at is not None

        await wait_until(between_tries, timeout_s=10, every_s=0.05)
        (job,) = seen
        assert job.status is JobState.IN_PROGRESS, job
        assert job.retries > 8  # past max_tries, still waiting
        body = job_body(job)
        assert body["next_attempt_at"] is not None
        assert body["last_error"].startswith("The mail service is unavailable")
        waiting.append(job)
    faulty_smtp.up()
    up_at = time.monotonic()

    done = [await finished(resources.jobs, i, timeout_s=60) for i in ids]
    delivered_s = time.monotonic() - up_at
    for before, job in zip(waiting, done, strict=True):
        assert before is not None
        assert job.status is JobState.SUCCEEDED, (job.error_code, job.error_message)
        assert len(faulty_smtp.for_export(job.job_id)) == 1
        assert job.file_stored_at == before.file_stored_at  # produced once, sent once
    print(  # noqa: T201 - the measured seconds the issue asks for
        f"\nmail outage {up_at - down_at:.0f} s: {len(done)} exports, up to "
        f"{max(j.retries for j in done)} tries each, all delivered once within "
        f"{delivered_s:.1f} s of the mail service's return"
    )


async def test_s3_away_during_the_upload_is_waited_out(
    procs: Processes,
    api: Api,
    resources: Resources,
    make_users: MakeUsers,
    faulty_smtp: FaultySmtp,
) -> None:
    (user,) = await make_users(1)
    endpoint = urlsplit(str(resources.settings.s3.endpoint_url))
    assert endpoint.port is not None
    s3 = SwitchableProxy(endpoint.port)  # down from the start: every upload is refused
    await procs.start_api()
    api.base = procs.api_url
    procs.start_worker(EXPORTER_S3__ENDPOINT_URL=f"http://127.0.0.1:{s3.port}")
    status, body = await api.create(user)
    assert status == 202

    async def retried() -> bool:
        # Each try takes a few seconds: botocore retries the refused connection itself.
        return await retries_of(resources, body["id"]) >= 3

    await wait_until(retried, timeout_s=90)
    await s3.up()
    try:
        job = await finished(resources.jobs, body["id"], timeout_s=60)
    finally:
        await s3.down()

    assert job.status is JobState.SUCCEEDED, (job.error_code, job.error_message)
    assert job.file_key is not None and job.file_stored_at is not None
    assert len(faulty_smtp.for_export(job.job_id)) == 1
    print(f"\nS3 away: {job.retries} tries, then stored and delivered once")  # noqa: T201


async def test_a_spent_budget_fails_the_export_and_its_notice_follows_the_mail_service(
    procs: Processes, api: Api, resources: Resources, make_users: MakeUsers, faulty_smtp: FaultySmtp
) -> None:
    (user,) = await make_users(1)
    faulty_smtp.down()
    await procs.start_api()
    api.base = procs.api_url
    procs.start_worker(EXPORTER_WORKER__RETRY_BUDGET_S="4")
    status, body = await api.create(user)
    assert status == 202

    failed: ExportJob | None = None

    async def failed_with_notice_pending() -> bool:
        nonlocal failed
        failed = await resources.jobs.get(body["id"])
        return failed is not None and job_body(failed)["failure_notice"] == "pending"

    await wait_until(failed_with_notice_pending, timeout_s=30)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "smtp_unavailable"
    assert faulty_smtp.for_export(body["id"]) == []
    faulty_smtp.up()

    async def notice_sent() -> bool:
        job = await resources.jobs.get(body["id"])
        return job is not None and job_body(job)["failure_notice"] == "sent"

    await wait_until(notice_sent, timeout_s=30)
    await asyncio.sleep(2)  # a few more tries' worth: nothing more is sent
    (notice,) = faulty_smtp.for_export(body["id"])
    assert notice["Subject"] == "Your memberships export could not be completed"
    after = await resources.jobs.get(body["id"])
    assert after is not None and after.status is JobState.FAILED


@pytest.mark.real_outage
@pytest.mark.timeout(600)
async def test_a_three_minute_mail_outage_at_the_shipped_defaults_loses_nothing(
    procs: Processes, api: Api, resources: Resources, make_users: MakeUsers, faulty_smtp: FaultySmtp
) -> None:
    """``make outage`` (not part of ``make test``: it waits out a real three minutes). The
    shipped retry policy: base 2 s, cap 60 s, budget 30 minutes."""
    users = await make_users(5)
    faulty_smtp.down()
    await procs.start_api()
    api.base = procs.api_url
    procs.start_worker(
        EXPORTER_WORKER__RETRY_BASE_S="2",
        EXPORTER_WORKER__RETRY_CAP_S="60",
        EXPORTER_WORKER__RETRY_BUDGET_S="1800",
        EXPORTER_WORKER__MAX_TRIES="5",
    )
    ids = []
    for user in users:
        status, body = await api.create(user)
        assert status == 202
        ids.append(body["id"])
    down_at = time.monotonic()
    await asyncio.sleep(180)
    for export_id in ids:
        job = await resources.jobs.get(export_id)
        assert job is not None and job.status is JobState.IN_PROGRESS, job
    faulty_smtp.up()
    up_at = time.monotonic()

    done = [await finished(resources.jobs, i, timeout_s=120) for i in ids]
    waits = sorted((j.finished_at - j.created_at).total_seconds() for j in done if j.finished_at)
    for job in done:
        assert job.status is JobState.SUCCEEDED, (job.error_code, job.error_message)
        assert len(faulty_smtp.for_export(job.job_id)) == 1
    print(  # noqa: T201 - the measured seconds the issue asks for
        f"\nmail outage {up_at - down_at:.0f} s at the shipped defaults: {len(done)} exports, "
        f"{min(j.retries for j in done)}-{max(j.retries for j in done)} tries each, all "
        f"delivered once, the last {time.monotonic() - up_at:.0f} s after the mail service "
        f"returned (request to delivery {waits[0]:.0f}-{waits[-1]:.0f} s)"
    )
