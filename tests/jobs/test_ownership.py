"""Two regions: ownership, takeover after the failed-region flag, downloads across regions,
and a replayed write conflict, against two sets of DynamoDB Local tables standing in for
the two replicas of each global table (tests/replication.py replicates them last writer
wins), two moto buckets, one Redis queue per region and one SMTP sink.

What is not here and cannot be: real cross-region replication and its latency, and two
real AWS regions; the replicator stands in for them (tests/replication.py says how).
"""

from __future__ import annotations

import io
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from arq.worker import Worker

from exporter.accounts import create_user
from exporter.app import create_app
from exporter.auth import TokenService
from exporter.aws import open_dynamo, open_s3
from exporter.config import Settings
from exporter.dev.smtp import SmtpSink
from exporter.errors import StoreError
from exporter.exports import lifecycle
from exporter.jobs.ownership import may_schedule_here
from exporter.jobs.produce import export_file_name
from exporter.jobs.sweep import sweep_jobs
from exporter.jobs.worker import build_worker_settings, run_schedules_task
from exporter.links import issue_link
from exporter.models import ExportJob, JobState, utcnow
from exporter.resources import Resources, open_resources
from exporter.store.files import ExportFiles
from exporter.store.tables import create_tables, table_specs
from tests.conftest import RUN_ID, SeedRows
from tests.helpers import TestUser, deliver, new_job
from tests.replication import LastWriterWins, SyncReport

A, B = "eu-west-1", "eu-central-1"
# A sweep "later": past the queued grace and the staleness of any heartbeat written now.
LATER = timedelta(seconds=120)


@dataclass
class Region:
    name: str
    settings: Settings
    resources: Resources


@dataclass
class TwoRegions:
    a: Region
    b: Region
    replication: LastWriterWins

    async def sync(self) -> SyncReport:
        return await self.replication.sync()


@pytest.fixture(name="region_tables", scope="module")
async def _fix_region_tables(base_settings: Settings) -> dict[str, Any]:
    """Each region's tables (a prefix of its own) and bucket, created once per module."""
    tag = secrets.token_hex(3)
    layout: dict[str, Any] = {
        A: {"prefix": f"t{RUN_ID}-{tag}-a-", "bucket": f"exporter-test-{RUN_ID}-{tag}-a"},
        B: {"prefix": f"t{RUN_ID}-{tag}-b-", "bucket": f"exporter-test-{RUN_ID}-{tag}-b"},
    }
    for region, spec in layout.items():
        dynamo = base_settings.dynamo.model_copy(update={"table_prefix": spec["prefix"]})
        async with open_dynamo(dynamo) as client:
            await create_tables(client, dynamo)
        s3 = base_settings.s3.model_copy(update={"bucket": spec["bucket"], "region": region})
        async with open_s3(s3) as client:
            await ExportFiles(client, s3).ensure_bucket()
    return layout


def _region_settings(settings: Settings, layout: dict[str, Any], region: str) -> Settings:
    buckets = {name: spec["bucket"] for name, spec in layout.items()}
    return settings.model_copy(
        update={
            "region": region,
            "dynamo": settings.dynamo.model_copy(update={"table_prefix": layout[region]["prefix"]}),
            "s3": settings.s3.model_copy(
                update={"bucket": buckets[region], "region": region, "region_buckets": buckets}
            ),
            # Each region has its own Redis in AWS: here, its own queue names.
            "redis": settings.redis.model_copy(
                update={"queue_name": f"{settings.redis.queue_name}:{region}"}
            ),
        }
    )


@pytest.fixture(name="regions")
async def _fix_regions(
    settings: Settings, region_tables: dict[str, Any]
) -> AsyncIterator[TwoRegions]:
    a_settings = _region_settings(settings, region_tables, A)
    b_settings = _region_settings(settings, region_tables, B)
    pairs = {
        spec_a["TableName"].removeprefix(a_settings.dynamo.table_prefix): (
            spec_a["TableName"],
            spec_b["TableName"],
        )
        for spec_a, spec_b in zip(
            table_specs(a_settings.dynamo), table_specs(b_settings.dynamo), strict=True
        )
    }
    async with (
        open_resources(a_settings) as a_resources,
        open_resources(b_settings) as b_resources,
    ):
        regions = TwoRegions(
            a=Region(A, a_settings, a_resources),
            b=Region(B, b_settings, b_resources),
            replication=LastWriterWins(a_resources.dynamo, pairs),
        )
        await _all_healthy(regions)
        yield regions
        await _all_healthy(regions)
        for region in (regions.a, regions.b):
            queue = region.settings.redis
            await region.resources.queue.redis.delete(queue.queue_name, queue.large_queue)


async def _all_healthy(regions: TwoRegions) -> None:
    """No region declared failed, in either replica (a failed test may leave a flag)."""
    for region in (regions.a, regions.b):
        assert region.resources.region_flags is not None
        for name in (A, B):
            await region.resources.region_flags.restore(name)
    await regions.sync()


async def _user(regions: TwoRegions, seed_rows: SeedRows, rows: int = 3) -> TestUser:
    """A user signed up in region a, with ``rows`` memberships, replicated to b."""
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    password = secrets.token_urlsafe(12)
    user_id = await create_user(regions.a.settings, email=email, password=password)
    await seed_rows(user_id, rows)
    await regions.sync()
    return TestUser(user_id, email, password)


async def _run_worker(region: Region) -> None:
    """One burst of a real arq worker of ``region`` (its own queue)."""
    kwargs = build_worker_settings(
        region.settings, burst=True, poll_delay=0, handle_signals=False, cron_jobs=[]
    )
    worker = Worker(**kwargs)
    try:
        await worker.main()
    finally:
        await worker.close()


async def _killed_run(resources: Resources, job: ExportJob) -> ExportJob:
    """What a region's crash leaves: the record in progress (attempt 1), its heartbeat
    a minute old, nothing else."""
    return await resources.jobs.transition(
        job.job_id,
        to=JobState.IN_PROGRESS,
        now=utcnow() - timedelta(seconds=60),
        fields={"started_at": utcnow() - timedelta(seconds=60)},
        increment_attempts=True,
    )


async def _get(region: Region, job_id: str) -> ExportJob:
    job = await region.resources.jobs.get(job_id)
    assert job is not None
    return job


async def test_a_job_is_owned_by_the_region_that_created_it(
    regions: TwoRegions, seed_rows: SeedRows
) -> None:
    user = await _user(regions, seed_rows)
    job = await new_job(regions.a.resources, user.user_id, age_s=60)
    await regions.sync()
    in_b = await _get(regions.b, job.job_id)
    assert in_b.home_region == A

    # A message for it reaching region b's workers is a no-op there...
    assert await deliver(regions.b.resources, job, user.user_id) is None
    # ...and region b's sweeper leaves it to region a's, though it looks lost from b.
    report = await sweep_jobs(regions.b.resources, now=utcnow() + LATER)
    assert job.job_id not in report.requeued_lost + report.taken_over + report.failed
    assert report.other_region >= 1
    assert await _get(regions.b, job.job_id) == in_b, "region b wrote nothing"
    assert (await regions.sync()).conflicts == []

    # Its own region runs it.
    outcome = await deliver(regions.a.resources, job, user.user_id)
    assert outcome is not None
    assert outcome.status is JobState.SUCCEEDED
    done = await _get(regions.a, job.job_id)
    assert done.file_region == A


async def test_takeover_only_after_the_region_is_declared_failed(
    regions: TwoRegions, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await _user(regions, seed_rows, rows=4)
    job = await _killed_run(regions.a.resources, await new_job(regions.a.resources, user.user_id))
    await regions.sync()

    # Region a is silent, but nobody declared it failed: region b keeps its hands off.
    before = await sweep_jobs(regions.b.resources, now=utcnow() + LATER)
    assert job.job_id not in before.requeued_orphaned + before.requeued_stale
    assert (await _get(regions.b, job.job_id)).home_region == A

    assert regions.b.resources.region_flags is not None
    await regions.b.resources.region_flags.declare_failed(A, now=utcnow(), reason="test")
    after = await sweep_jobs(regions.b.resources, now=utcnow() + LATER)
    assert after.taken_over == [job.job_id]
    assert (await _get(regions.b, job.job_id)).home_region == B, "the claim re-homes it"

    await _run_worker(regions.b)
    done = await _get(regions.b, job.job_id)
    assert done.status is JobState.SUCCEEDED
    assert done.row_count == 4
    assert done.file_region == B, "the file is kept in the region that produced it"
    assert len(smtp_sink.for_export(job.job_id)) == 1

    await regions.sync()
    assert await _get(regions.a, job.job_id) == done
    # Region a, back with the flag replicated to it, is fenced: its stale message is a no-op.
    assert await deliver(regions.a.resources, job, user.user_id) is None
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_takeover_stores_the_file_in_its_own_region_whatever_the_dead_run_recorded(
    regions: TwoRegions, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    """The start records where the file goes only where the record names no place yet (an
    earlier run's stored file keeps its own): region a's run recorded its location, then
    died before storing anything; region b's run must not upload into b's bucket while the
    record still names a's."""
    user = await _user(regions, seed_rows, rows=3)
    job = await new_job(regions.a.resources, user.user_id)
    files_a = regions.a.resources.files
    dead = await lifecycle.start_run(
        regions.a.resources.jobs,
        job.job_id,
        user_id=user.user_id,
        home_region=A,
        file_key=files_a.key_for(job.job_id, export_file_name(job)),  # the same key as b's
        file_expires_at=utcnow() + timedelta(days=1),
        file_region=A,
    )
    await regions.a.resources.jobs.transition(
        job.job_id, to=JobState.IN_PROGRESS, now=utcnow() - timedelta(seconds=60)
    )  # its heartbeat is a minute old
    assert dead.file_region == A
    await regions.sync()

    assert regions.b.resources.region_flags is not None
    await regions.b.resources.region_flags.declare_failed(A, now=utcnow(), reason="test")
    assert (await sweep_jobs(regions.b.resources, now=utcnow() + LATER)).taken_over == [job.job_id]
    await _run_worker(regions.b)

    done = await _get(regions.b, job.job_id)
    assert done.status is JobState.SUCCEEDED and done.row_count == 3
    assert done.file_region == B and done.file_key is not None
    assert await _exists(regions.b.resources.files, done.file_key)
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_download_link_served_by_either_region_fetches_from_the_files_region(
    regions: TwoRegions, seed_rows: SeedRows, tokens: TokenService
) -> None:
    user = await _user(regions, seed_rows, rows=5)
    job = await new_job(regions.a.resources, user.user_id)
    outcome = await deliver(regions.a.resources, job, user.user_id)
    assert outcome is not None
    assert outcome.status is JobState.SUCCEEDED
    await regions.sync()
    in_b = await _get(regions.b, job.job_id)
    assert in_b.file_region == A
    assert in_b.file_key is not None
    stored = regions.a.resources.files
    assert not await _exists(regions.b.resources.files, in_b.file_key)

    # The same signing keys in both regions (Secrets Manager replicas): a link issued in
    # region a opens in region b, which signs a URL for region a's bucket.
    link = issue_link(tokens, regions.a.settings.api.public_url, in_b)
    path = link.url.removeprefix(regions.a.settings.api.public_url)
    app_b = create_app(regions.b.settings, tokens=tokens)
    async with TestClient(TestServer(app_b)) as client:
        response = await client.get(path, allow_redirects=False)
        assert response.status == 302, await response.text()
        location = response.headers["Location"]
    assert stored.bucket in location
    assert regions.b.resources.files.bucket not in location
    async with aiohttp.ClientSession() as session, session.get(location) as got:
        assert got.status == 200
        body = await got.read()
    assert len(body) == in_b.byte_size


async def _exists(files: ExportFiles, key: str) -> bool:
    try:
        await files.download(key, io.BytesIO())
    except StoreError:
        return False
    return True


async def test_a_replayed_write_conflict_runs_the_export_once_and_mails_once(
    regions: TwoRegions, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    """Region a dies mid-run with one heartbeat still in flight; region b takes the job
    over; the in-flight write then lands later than the takeover (last writer wins undoes
    it); the rules still produce one export and one email."""
    user = await _user(regions, seed_rows, rows=6)
    job = await _killed_run(regions.a.resources, await new_job(regions.a.resources, user.user_id))
    await regions.sync()

    assert regions.b.resources.region_flags is not None
    await regions.b.resources.region_flags.declare_failed(A, now=utcnow(), reason="test")
    claimed_at = utcnow() + LATER
    report = await sweep_jobs(regions.b.resources, now=claimed_at)
    assert report.taken_over == [job.job_id]

    # Region a's last heartbeat, written before it died but stamped later than the claim
    # (its clock, or a write that reached DynamoDB late), is replayed now.
    await regions.a.resources.jobs.record_progress(
        job.job_id, attempt=1, rows_exported=1, total_rows=6, now=claimed_at + timedelta(seconds=5)
    )
    sync = await regions.replication.sync()
    assert [(table, winner) for table, _, winner in sync.conflicts] == [("export-jobs", "a")]
    reverted = await _get(regions.b, job.job_id)
    assert reverted.home_region == A, "last writer wins undid the takeover"

    # Region b's worker gets the takeover's message: the job is not its own any more.
    await _run_worker(regions.b)
    assert (await _get(regions.b, job.job_id)).status is JobState.IN_PROGRESS
    assert smtp_sink.for_export(job.job_id) == []

    # The next sweep sees the (replayed) heartbeat go stale and takes the job again.
    again = await sweep_jobs(regions.b.resources, now=claimed_at + LATER)
    assert again.taken_over == [job.job_id]
    await _run_worker(regions.b)
    done = await _get(regions.b, job.job_id)
    assert done.status is JobState.SUCCEEDED
    assert done.home_region == B
    assert done.row_count == 6
    assert len(smtp_sink.for_export(job.job_id)) == 1

    # Region a comes back: it converges on b's record and, fenced, does nothing more.
    assert (await regions.replication.sync()).conflicts == []
    assert await _get(regions.a, job.job_id) == done
    assert await deliver(regions.a.resources, job, user.user_id) is None
    fenced = await sweep_jobs(regions.a.resources, now=claimed_at + 2 * LATER)
    assert job.job_id not in fenced.requeued_stale + fenced.requeued_orphaned + fenced.failed
    assert len(smtp_sink.for_export(job.job_id)) == 1
    assert await _get(regions.a, job.job_id) == done


async def test_a_mailed_export_taken_over_is_finished_not_mailed_again(
    regions: TwoRegions, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    """The email guard across regions: region a's run recorded ``email_sent_at`` (the
    moment the mail server accepted the message) and that write replicated before region a
    died; the region that takes the job over finishes it without sending anything. (Runs
    now record the success with the guard; a run of the previous release wrote the guard
    alone first, which is what region a left here.)"""
    user = await _user(regions, seed_rows, rows=2)
    job = await _killed_run(regions.a.resources, await new_job(regions.a.resources, user.user_id))
    await regions.a.resources.jobs.mark_email_sent(
        job.job_id,
        status=JobState.IN_PROGRESS,
        now=utcnow(),
        fields={
            "row_count": 2,
            "byte_size": 100,
            "file_name": "export.csv",
            "delivery": "attachment",
            "sha256": "0" * 64,
        },
    )
    await regions.sync()

    assert regions.b.resources.region_flags is not None
    await regions.b.resources.region_flags.declare_failed(A, now=utcnow(), reason="test")
    later = utcnow() + LATER
    assert (await sweep_jobs(regions.b.resources, now=later)).taken_over == [job.job_id]
    await _run_worker(regions.b)
    done = await _get(regions.b, job.job_id)
    assert done.status is JobState.SUCCEEDED
    assert done.row_count == 2
    assert smtp_sink.for_export(job.job_id) == [], "region a's email was the one"


async def test_a_region_declared_failed_claims_no_schedules(regions: TwoRegions) -> None:
    # Region a comes back after a failover: it sees itself declared failed and its scheduler
    # keeps its hands off until failback, so region b's scheduler is the only one claiming.
    a = regions.a
    ctx: dict[str, Any] = {"resources": a.resources}  # what on_startup puts in arq's ctx
    assert await may_schedule_here(a.resources)
    assert a.resources.region_flags is not None
    await a.resources.region_flags.declare_failed(A, now=utcnow(), reason="test")
    assert not await may_schedule_here(a.resources)
    assert await run_schedules_task(ctx) == {"fenced": 1}
    await a.resources.region_flags.restore(A)
    assert await may_schedule_here(a.resources)
