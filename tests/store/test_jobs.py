"""JobStore against DynamoDB Local: conditional transitions, listing, expiry."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from exporter.errors import ConditionFailed, InvalidCursor
from exporter.exports import lifecycle
from exporter.models import ExportFormat, ExportJob, JobState, utcnow
from exporter.resources import Resources
from exporter.store.jobs import CurrentExport, JobRefused, JobStore


def new_job(user_id: str | None = None, *, retention_s: int = 3600, age_s: int = 0) -> ExportJob:
    return ExportJob.new(
        user_id=user_id or str(uuid.uuid4()),
        fmt=ExportFormat.CSV,
        now=utcnow() - timedelta(seconds=age_s),
        retention_s=retention_s,
    )


async def test_created_job_reads_back_identically(resources: Resources) -> None:
    job = new_job()
    await resources.jobs.create(job)
    assert await resources.jobs.get(job.job_id) == job


async def test_every_optional_field_reads_back_identically(resources: Resources) -> None:
    now = utcnow().replace(microsecond=123456)
    job = new_job().replace(
        bom=True,
        status=JobState.SUCCEEDED,
        started_at=now,
        finished_at=now,
        attempts=2,
        row_count=10,
        byte_size=2048,
        file_name="memberships.csv",
        delivery="download_link",
        rows_exported=10,
        total_rows=10,
        heartbeat_at=now,
        email_sent_at=now,
        file_key="exports/abc.csv",
        file_expires_at=now + timedelta(days=7),
    )
    await resources.jobs.create(job)
    assert await resources.jobs.get(job.job_id) == job


async def test_creating_the_same_id_twice_is_refused(resources: Resources) -> None:
    job = new_job()
    await resources.jobs.create(job)
    with pytest.raises(ConditionFailed):
        await resources.jobs.create(job.replace(user_id=str(uuid.uuid4())))


async def test_legal_path_records_every_step(resources: Resources) -> None:
    job = new_job()
    await resources.jobs.create(job)
    started = await resources.jobs.transition(
        job.job_id,
        to=JobState.IN_PROGRESS,
        now=utcnow(),
        fields={"started_at": utcnow()},
        increment_attempts=True,
    )
    done = await resources.jobs.transition(
        job.job_id,
        to=JobState.SUCCEEDED,
        now=utcnow(),
        fields={"finished_at": utcnow(), "row_count": 7, "byte_size": 1234},
    )
    assert started.status is JobState.IN_PROGRESS and started.attempts == 1
    assert done.status is JobState.SUCCEEDED
    assert (done.row_count, done.byte_size) == (7, 1234)
    assert done.started_at is not None and done.finished_at is not None


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], JobState.SUCCEEDED),  # queued cannot finish without running
        ([JobState.FAILED], JobState.IN_PROGRESS),  # terminal states never move
        ([JobState.IN_PROGRESS, JobState.SUCCEEDED], JobState.FAILED),
        ([JobState.IN_PROGRESS, JobState.SUCCEEDED], JobState.IN_PROGRESS),
    ],
)
async def test_illegal_transitions_are_refused_and_change_nothing(
    resources: Resources, path: list[JobState], illegal: JobState
) -> None:
    job = new_job()
    await resources.jobs.create(job)
    for state in path:
        await resources.jobs.transition(job.job_id, to=state, now=utcnow())
    before = await resources.jobs.get(job.job_id)

    with pytest.raises(ConditionFailed):
        await resources.jobs.transition(job.job_id, to=illegal, now=utcnow())

    assert await resources.jobs.get(job.job_id) == before


async def test_transition_of_a_missing_job_is_refused(resources: Resources) -> None:
    with pytest.raises(ConditionFailed):
        await resources.jobs.transition(str(uuid.uuid4()), to=JobState.IN_PROGRESS, now=utcnow())


async def test_only_one_of_two_racing_finishers_wins(resources: Resources) -> None:
    import asyncio

    job = new_job()
    await resources.jobs.create(job)
    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())

    results = await asyncio.gather(
        *(
            resources.jobs.transition(
                job.job_id, to=JobState.SUCCEEDED, expected=(JobState.IN_PROGRESS,), now=utcnow()
            )
            for _ in range(5)
        ),
        return_exceptions=True,
    )

    assert sum(isinstance(r, ExportJob) for r in results) == 1
    assert sum(isinstance(r, ConditionFailed) for r in results) == 4


async def start_run(resources: Resources, job: ExportJob) -> ExportJob:
    """The job as a worker's run sees it right after taking it: in_progress, attempt n."""
    return await resources.jobs.transition(
        job.job_id, to=JobState.IN_PROGRESS, now=utcnow(), increment_attempts=True
    )


async def test_progress_and_heartbeat_are_recorded_for_the_running_attempt(
    resources: Resources,
) -> None:
    job = new_job()
    await resources.jobs.create(job)
    running = await start_run(resources, job)
    at = utcnow().replace(microsecond=250000)

    await resources.jobs.record_progress(
        job.job_id, attempt=running.attempts, rows_exported=40, total_rows=100, now=at
    )

    seen = await resources.jobs.get(job.job_id)
    assert seen is not None
    assert (seen.rows_exported, seen.total_rows, seen.progress) == (40, 100, 0.4)
    assert seen.heartbeat_at == at and seen.updated_at == at
    assert seen.status is JobState.IN_PROGRESS and seen.attempts == running.attempts


@pytest.mark.parametrize("moved_on", ["newer_attempt", "cancelled", "succeeded", "missing"])
async def test_progress_of_a_run_that_lost_the_job_is_refused_and_changes_nothing(
    resources: Resources, moved_on: str
) -> None:
    job = new_job()
    if moved_on != "missing":
        await resources.jobs.create(job)
        running = await start_run(resources, job)
        if moved_on == "newer_attempt":
            await start_run(resources, running)  # a re-delivery took the job over
        else:
            await resources.jobs.transition(job.job_id, to=JobState(moved_on), now=utcnow())
    before = await resources.jobs.get(job.job_id)

    with pytest.raises(ConditionFailed):
        await resources.jobs.record_progress(
            job.job_id, attempt=1, rows_exported=5, total_rows=10, now=utcnow()
        )

    assert await resources.jobs.get(job.job_id) == before


# --- the run's start: its first call, conditional on what a read would have checked ---------


async def start_for(
    resources: Resources, job: ExportJob, *, user_id: str | None = None, home: str | None = None
) -> ExportJob:
    """``lifecycle.start_run`` as a worker's run calls it, with a location of its own."""
    return await lifecycle.start_run(
        resources.jobs,
        job.job_id,
        worker_id="host:1:abc",
        user_id=user_id or job.user_id,
        home_region=home,
        file_key=f"exports/{job.job_id}/run-{uuid.uuid4().hex[:6]}.csv",
        file_expires_at=utcnow() + timedelta(days=7),
        file_region=home,
    )


async def test_the_start_records_where_the_file_goes_unless_a_location_is_recorded(
    resources: Resources,
) -> None:
    job = new_job()
    await resources.jobs.create(job)

    first = await start_for(resources, job)
    again = await start_for(resources, job)  # a re-run: its own location is not written

    assert first.status is JobState.IN_PROGRESS and first.attempts == 1
    assert first.file_key is not None and first.file_expires_at is not None
    assert again.attempts == 2 and again.worker_id == "host:1:abc"
    assert (again.file_key, again.file_expires_at) == (first.file_key, first.file_expires_at)


@pytest.mark.parametrize("refusal", ["missing", "other_user", "other_region", "finished"])
async def test_a_refused_start_returns_the_record_as_it_was_and_changes_nothing(
    resources: Resources, refusal: str
) -> None:
    job = new_job()
    user_id, home = job.user_id, None
    if refusal != "missing":
        homed = job.replace(home_region="eu-west-1") if refusal == "other_region" else job
        await resources.jobs.create(homed)
    if refusal == "other_user":
        user_id = str(uuid.uuid4())
    elif refusal == "other_region":
        home = "eu-central-1"
    elif refusal == "finished":
        await resources.jobs.transition(job.job_id, to=JobState.CANCELLED, now=utcnow())
    before = await resources.jobs.get(job.job_id)

    with pytest.raises(JobRefused) as refused:
        await start_for(resources, job, user_id=user_id, home=home)

    assert refused.value.current == before  # None when there is no record
    assert await resources.jobs.get(job.job_id) == before


async def test_a_job_homed_nowhere_or_here_starts_in_this_region(resources: Resources) -> None:
    unhomed, here = new_job(), new_job().replace(home_region="eu-west-1")
    for job in (unhomed, here):
        await resources.jobs.create(job)
        started = await start_for(resources, job, home="eu-west-1")
        assert started.status is JobState.IN_PROGRESS
        assert started.file_region == "eu-west-1"


async def deliver_for(resources: Resources, job_id: str, *, attempt: int) -> ExportJob:
    """``lifecycle.mark_delivered`` as a run's guard calls it."""
    return await lifecycle.mark_delivered(
        resources.jobs,
        job_id,
        attempt=attempt,
        row_count=3,
        byte_size=120,
        file_name="memberships.csv",
        delivery="email_attachment",
        sha256="0" * 64,
        file_stored_at=utcnow(),
    )


async def test_the_delivery_guard_records_the_success_in_the_same_write(
    resources: Resources,
) -> None:
    job = new_job()
    await resources.jobs.create(job)
    running = await start_for(resources, job)

    done = await deliver_for(resources, job.job_id, attempt=running.attempts)

    assert done.status is JobState.SUCCEEDED and done.delivered_at is not None
    assert done.finished_at == done.delivered_at == done.updated_at
    assert (done.row_count, done.rows_exported, done.byte_size) == (3, 3, 120)
    assert (done.file_name, done.delivery, done.sha256) == (
        "memberships.csv",
        "email_attachment",
        "0" * 64,
    )
    assert done.file_stored_at is not None
    assert done == await resources.jobs.get(job.job_id)
    assert not done.status.is_active  # out of the sparse active index


@pytest.mark.parametrize("moved_on", ["newer_attempt", "cancelled", "delivered", "missing"])
async def test_the_delivery_guard_of_a_run_that_lost_the_job_is_refused(
    resources: Resources, moved_on: str
) -> None:
    job = new_job()
    if moved_on != "missing":
        await resources.jobs.create(job)
        await start_for(resources, job)
        if moved_on == "newer_attempt":
            await start_for(resources, job)
        elif moved_on == "cancelled":
            await resources.jobs.transition(job.job_id, to=JobState.CANCELLED, now=utcnow())
        else:  # a run of the previous release wrote its guard alone, then died
            await resources.jobs.mark_email_sent(
                job.job_id, status=JobState.IN_PROGRESS, now=utcnow()
            )
    before = await resources.jobs.get(job.job_id)

    with pytest.raises(ConditionFailed):
        await deliver_for(resources, job.job_id, attempt=1)

    assert await resources.jobs.get(job.job_id) == before


async def test_list_pages_through_one_users_jobs_newest_first(resources: Resources) -> None:
    user = str(uuid.uuid4())
    jobs = [new_job(user, age_s=100 - i) for i in range(5)]
    for job in jobs:
        await resources.jobs.create(job)
    await resources.jobs.create(new_job())  # someone else's

    seen, cursor = [], None
    while True:
        page = await resources.jobs.list_for_user(user, limit=2, cursor=cursor)
        seen += [j.job_id for j in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == [j.job_id for j in reversed(jobs)]


async def test_cursor_for_another_user_is_refused(resources: Resources) -> None:
    user = str(uuid.uuid4())
    for _ in range(2):
        await resources.jobs.create(new_job(user))
    page = await resources.jobs.list_for_user(user, limit=1)
    assert page.next_cursor is not None
    with pytest.raises(InvalidCursor):
        await resources.jobs.list_for_user(str(uuid.uuid4()), limit=1, cursor=page.next_cursor)


async def test_expiry_deletes_only_records_past_retention(resources: Resources) -> None:
    store: JobStore = resources.jobs
    old = new_job(retention_s=60, age_s=3600)
    fresh = new_job(retention_s=3600)
    await store.create(old)
    await store.create(fresh)

    deleted = await store.delete_expired(now=utcnow())

    assert deleted >= 1
    assert await store.get(old.job_id) is None
    assert await store.get(fresh.job_id) == fresh


async def test_operator_requeue_leaves_failed_only_and_clears_the_last_run(
    resources: Resources,
) -> None:
    jobs = resources.jobs
    job = new_job()
    await jobs.create(job)
    with pytest.raises(ConditionFailed):  # queued is not failed
        await jobs.requeue_failed(job.job_id, now=utcnow())
    await jobs.transition(
        job.job_id, to=JobState.IN_PROGRESS, now=utcnow(), increment_attempts=True
    )
    now = utcnow()
    await jobs.transition(
        job.job_id,
        to=JobState.FAILED,
        now=now,
        fields={"finished_at": now, "error_code": "smtp_unavailable", "error_message": "x"},
    )

    requeued = await jobs.requeue_failed(job.job_id, now=utcnow())

    assert requeued.status is JobState.QUEUED
    assert requeued.error_code is None and requeued.error_message is None
    assert requeued.started_at is None and requeued.finished_at is None
    assert requeued.attempts == 1  # history of attempts is kept
    # ... and none of those runs counts as one lost to a dying worker (the sweeper's rule).
    assert requeued.attempts - requeued.retries == 0
    assert requeued.requeued_at is not None  # its retry budget counts from here
    with pytest.raises(ConditionFailed):  # and only once
        await jobs.requeue_failed(job.job_id, now=utcnow())
    with pytest.raises(ConditionFailed):
        await jobs.requeue_failed(str(uuid.uuid4()), now=utcnow())


async def test_the_slot_admits_one_create_per_finished_predecessor(resources: Resources) -> None:
    jobs = resources.jobs
    user_id = str(uuid.uuid4())
    assert await jobs.current_for_user(user_id) == CurrentExport(None, None)
    first, rival, second = new_job(user_id), new_job(user_id), new_job(user_id)

    await jobs.create_exclusive(first, previous=None)
    # A create that read the slot before `first` claimed it loses, and writes nothing.
    with pytest.raises(ConditionFailed):
        await jobs.create_exclusive(rival, previous=None)
    assert await jobs.get(rival.job_id) is None
    current = await jobs.current_for_user(user_id)
    assert current.slot_job_id == first.job_id and current.active == first

    await jobs.transition(first.job_id, to=JobState.CANCELLED, now=utcnow())
    assert (await jobs.current_for_user(user_id)).active is None
    await jobs.create_exclusive(second, previous=first.job_id)
    assert (await jobs.current_for_user(user_id)).active == second
    # `first` is no longer what the slot names: a stale reader loses again.
    with pytest.raises(ConditionFailed):
        await jobs.create_exclusive(rival, previous=first.job_id)


async def test_a_slot_naming_a_vanished_job_is_free(resources: Resources) -> None:
    jobs = resources.jobs
    user_id = str(uuid.uuid4())
    gone = new_job(user_id)
    await jobs.create_exclusive(gone, previous=None)
    await resources.dynamo.delete_item(
        TableName=resources.settings.dynamo.jobs_table, Key={"job_id": {"S": gone.job_id}}
    )
    current = await jobs.current_for_user(user_id)
    assert current == CurrentExport(gone.job_id, None) and current.active is None
    await jobs.create_exclusive(new_job(user_id), previous=current.slot_job_id)


async def test_created_since_counts_a_window_oldest_first(resources: Resources) -> None:
    jobs = resources.jobs
    user_id = str(uuid.uuid4())
    old, mid, failed, new = (
        new_job(user_id, age_s=90_000),
        new_job(user_id, age_s=70_000),
        new_job(user_id, age_s=600).replace(status=JobState.FAILED, error_code="enqueue_failed"),
        new_job(user_id, age_s=60),
    )
    for job in (old, mid, failed, new):
        await jobs.create(job)
    since = utcnow() - timedelta(hours=24)

    assert [j.job_id for j in await jobs.created_since(user_id, since, limit=10)] == [
        mid.job_id,
        failed.job_id,
        new.job_id,
    ]
    counted = await jobs.created_since(user_id, since, limit=10, excluding_error="enqueue_failed")
    assert [j.job_id for j in counted] == [mid.job_id, new.job_id]
    assert [j.job_id for j in await jobs.created_since(user_id, since, limit=1)] == [mid.job_id]


async def test_downloads_are_counted_atomically(resources: Resources) -> None:
    job = new_job().replace(status=JobState.SUCCEEDED)
    await resources.jobs.create(job)
    now = utcnow().replace(microsecond=0)

    await asyncio.gather(*(resources.jobs.record_download(job.job_id, now=now) for _ in range(5)))

    counted = await resources.jobs.get(job.job_id)
    assert counted is not None
    assert counted.download_count == 5 and counted.last_downloaded_at == now
    assert counted.replace(download_count=0, last_downloaded_at=None) == job.replace(
        updated_at=counted.updated_at
    )
    with pytest.raises(ConditionFailed):
        await resources.jobs.record_download(str(uuid.uuid4()), now=now)


async def test_a_region_stamps_its_jobs_and_a_takeover_claim_rehomes_once(
    resources: Resources,
) -> None:
    """Two regions: the store homes every job it creates in its region; the sweeper's
    takeover claim moves the home only while the record is still as read."""
    here = JobStore(resources.dynamo, resources.settings.dynamo, home_region="eu-west-1")
    job = ExportJob.new(
        user_id=str(uuid.uuid4()), fmt=ExportFormat.CSV, now=utcnow(), retention_s=3600
    )
    await here.create(job)
    seen = await here.get(job.job_id)
    assert seen is not None
    assert seen.home_region == "eu-west-1"

    # The home moved meanwhile (another region's takeover, replicated), nothing else did:
    # a claim from the read before that loses.
    await resources.dynamo.update_item(
        TableName=resources.settings.dynamo.jobs_table,
        Key={"job_id": {"S": job.job_id}},
        UpdateExpression="SET home_region = :h",
        ExpressionAttributeValues={":h": {"S": "us-east-1"}},
    )
    with pytest.raises(ConditionFailed):
        await resources.jobs.claim_stale(seen, now=utcnow(), rehome="eu-central-1")
    moved = await here.get(job.job_id)
    assert moved is not None
    claimed = await resources.jobs.claim_stale(moved, now=utcnow(), rehome="eu-central-1")
    assert claimed.home_region == "eu-central-1"
    # A one-region store (the default) stamps nothing.
    plain = ExportJob.new(
        user_id=str(uuid.uuid4()), fmt=ExportFormat.CSV, now=utcnow(), retention_s=3600
    )
    await resources.jobs.create(plain)
    stored = await resources.jobs.get(plain.job_id)
    assert stored is not None
    assert stored.home_region is None
