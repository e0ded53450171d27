"""The retry policy: how long a retry waits (exponential, capped, full jitter), what arq is
told, and which real failures count as transient (retry later) or permanent (fail now)."""

from __future__ import annotations

import dataclasses
import statistics
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from arq import Retry
from arq.utils import timestamp_ms
from arq.worker import Worker

from exporter.aws import open_dynamo, open_s3
from exporter.config import S3Settings, Settings
from exporter.dev.ports import free_port
from exporter.dev.smtp import SmtpSink
from exporter.errors import ExportFailed, RetryLater, StoreUnavailable
from exporter.jobs.run import backoff_delay, run_export
from exporter.jobs.worker import build_worker_settings, run_export_task
from exporter.mail.smtp import Mailer
from exporter.models import ExportMessageV1, JobState
from exporter.resources import Resources, open_pg_pool
from exporter.store.files import ExportFiles
from exporter.store.jobs import JobStore
from tests.aws_errors import AwsError, aws_error_endpoint
from tests.conftest import PG_ADMIN_DSN, MakeUser, SeedRows
from tests.helpers import deliver, new_job, with_exports

# Enough draws that "the whole range is used" cannot fail by chance: the largest of 2000
# uniform draws stays below 90 % of the bound with probability 0.9**2000 (about 1e-92).
SAMPLES = 2000


@pytest.mark.parametrize(
    ("attempt", "bound_s"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (7, 120.0), (40, 120.0)]
)
def test_the_backoff_doubles_from_the_base_and_stops_at_the_cap(
    attempt: int, bound_s: float
) -> None:
    delays = [backoff_delay(attempt, base_s=2.0, cap_s=120.0) for _ in range(SAMPLES)]

    assert all(0 <= d <= bound_s for d in delays)
    assert max(delays) > 0.9 * bound_s


def test_full_jitter_spreads_retries_over_the_whole_range() -> None:
    delays = [backoff_delay(5, base_s=2.0, cap_s=120.0) for _ in range(SAMPLES)]

    assert len(set(delays)) == SAMPLES  # no two retries of a crowd at the same moment
    assert min(delays) < 0.05 * 32 and max(delays) > 0.95 * 32
    # Uniform over [0, 32]: the mean is 16 give or take 0.2 (one standard error).
    assert 14.0 < statistics.fmean(delays) < 18.0


def test_the_defaults_are_two_seconds_doubling_to_a_minute() -> None:
    # A long outage costs one try every half minute on average, not a storm.
    assert max(backoff_delay(1) for _ in range(SAMPLES)) <= 2.0
    assert 0.9 * 60.0 < max(backoff_delay(20) for _ in range(SAMPLES)) <= 60.0
    assert max(backoff_delay(5000) for _ in range(SAMPLES)) <= 60.0  # no float overflow


def with_worker(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"worker": settings.worker.model_copy(update=changes)})


def with_dead_smtp(settings: Settings) -> Settings:
    """Nothing listens on the mail port: every send fails with connection refused."""
    smtp = settings.smtp.model_copy(update={"port": free_port(), "timeout_s": 2})
    return settings.model_copy(update={"smtp": smtp})


async def test_a_transient_failure_hands_arq_the_jittered_backoff_of_its_try(
    resources: Resources, settings: Settings, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    job = await new_job(resources, user.user_id)
    policy = with_dead_smtp(
        with_worker(settings, retry_base_s=100.0, retry_cap_s=300.0, max_tries=10)
    )
    down = dataclasses.replace(resources, settings=policy, mailer=Mailer(policy.smtp))
    payload = ExportMessageV1(job.job_id, user.user_id).to_payload()

    async def defer_of_try(job_try: int) -> float:
        ctx = {"settings": policy, "resources": down, "job_try": job_try}
        with pytest.raises(Retry) as raised:
            await run_export_task(ctx, payload)
        assert raised.value.defer_score is not None
        return raised.value.defer_score / 1000

    first = [await defer_of_try(1) for _ in range(3)]
    third = await defer_of_try(3)
    fifth = await defer_of_try(5)

    assert all(0 <= d <= 100 for d in first)  # base
    assert len(set(first)) == 3  # jittered, not one fixed delay
    assert 0 <= third <= 300  # 100 * 2**2 = 400, capped
    assert 0 <= fifth <= 300
    record = await resources.jobs.get(job.job_id)
    assert record is not None and record.status is JobState.IN_PROGRESS
    assert record.error_code is None  # a retry is not a failure


async def test_arq_runs_the_retry_no_later_than_the_backoff_allows(
    resources: Resources, settings: Settings, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    job = await new_job(resources, user.user_id)
    policy = with_dead_smtp(with_worker(settings, retry_base_s=30.0, retry_cap_s=60.0))
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))
    worker = Worker(
        **build_worker_settings(
            policy,
            burst=True,
            max_burst_jobs=1,
            poll_delay=0,
            handle_signals=False,
            cron_jobs=[],
        )
    )

    before = timestamp_ms()
    try:
        await worker.main()
    finally:
        await worker.close()
    after = timestamp_ms()

    assert worker.jobs_retried == 1
    # arq puts the job back with score "now + defer": due within the first try's bound.
    due = await resources.queue.redis.zscore(settings.redis.queue_name, job.job_id)
    assert due is not None
    assert before <= due <= after + 30_000


# --- which real failures are transient ---------------------------------------------------


@pytest.fixture(name="refused_pool")
async def _fix_refused_pool(pg_dsn: str, settings: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool whose every connection PostgreSQL refuses with "too many connections" (SQLSTATE
    53300): its role may open none (CONNECTION LIMIT 0)."""
    role = f"exporter_full_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
        dsn = pg_dsn.replace("postgres@", f"{role}@", 1)
        pool = await open_pg_pool(settings.postgres, dsn, min_size=0)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_too_many_database_connections_is_retried_later(
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
    refused_pool: asyncpg.Pool[Any],
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    job = await new_job(resources, user.user_id)
    crowded = dataclasses.replace(resources, pg_export=refused_pool)

    with pytest.raises(RetryLater) as raised:
        await deliver(crowded, job, user.user_id)

    cause = raised.value.__cause__
    assert isinstance(cause, ExportFailed) and cause.transient
    assert cause.code == "database_unavailable"
    assert isinstance(cause.__cause__, asyncpg.TooManyConnectionsError)
    assert smtp_sink.for_export(job.job_id) == []


async def test_dynamodb_throttling_before_the_record_is_read_is_retried_later(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)

    async with aws_error_endpoint(AwsError.dynamo("ThrottlingException")) as url:
        dynamo = resources.settings.dynamo.model_copy(
            update={"endpoint_url": url, "max_attempts": 1}
        )
        async with open_dynamo(dynamo) as client:
            throttled = dataclasses.replace(resources, jobs=JobStore(client, dynamo))
            with pytest.raises(RetryLater) as raised:
                await deliver(throttled, job, user.user_id)
            # The last try has no later one: the error goes to arq, the record stays
            # queued, and the sweeper enqueues it again (tests/jobs/test_sweep.py).
            with pytest.raises(StoreUnavailable):
                await run_export(
                    throttled,
                    ExportMessageV1(job.job_id, user.user_id).to_payload(),
                    attempt=3,
                    max_attempts=3,
                )

    assert isinstance(raised.value.__cause__, StoreUnavailable)
    assert "ThrottlingException" in str(raised.value.__cause__)
    untouched = await resources.jobs.get(job.job_id)
    assert untouched is not None and untouched.status is JobState.QUEUED


@asynccontextmanager
async def s3_answering(error: AwsError, resources: Resources) -> AsyncIterator[Resources]:
    """``resources`` whose bucket answers ``error`` and which attach nothing (so every
    export goes to S3)."""
    async with aws_error_endpoint(error) as url:
        s3 = S3Settings(endpoint_url=url, bucket=resources.files.bucket, max_attempts=1)
        async with open_s3(s3) as client:
            yield dataclasses.replace(
                with_exports(resources, attachment_max_bytes=1024),
                files=ExportFiles(client, s3),
            )


async def test_s3_slowdown_during_the_upload_is_retried_later(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 20)
    job = await new_job(resources, user.user_id)

    async with s3_answering(AwsError.s3("SlowDown", status=503), resources) as slow:
        with pytest.raises(RetryLater) as raised:
            await deliver(slow, job, user.user_id)

    assert isinstance(raised.value.__cause__, StoreUnavailable)
    assert "SlowDown" in str(raised.value.__cause__)
    record = await resources.jobs.get(job.job_id)
    assert record is not None and record.status is JobState.IN_PROGRESS
    assert smtp_sink.for_export(job.job_id) == []


async def test_s3_refusing_the_upload_fails_the_export_at_once(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 20)
    job = await new_job(resources, user.user_id)

    async with s3_answering(AwsError.s3("AccessDenied", status=403), resources) as denied:
        outcome = await deliver(denied, job, user.user_id)

    assert outcome is not None and outcome.status is JobState.FAILED
    record = await resources.jobs.get(job.job_id)
    assert record is not None and record.error_code == "storage_error"
    assert record.attempts == 1
    # The owner hears of the failure (a notice, without the file), once.
    (notice,) = smtp_sink.for_export(job.job_id)
    assert list(notice.iter_attachments()) == []
