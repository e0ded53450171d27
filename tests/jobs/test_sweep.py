"""The recovery sweeper against real DynamoDB Local, Redis and arq state.

The sweeper works on the whole (per-run) jobs table, so other tests' leftovers are swept
too: assertions are about this test's jobs only."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix

from exporter.config import Settings
from exporter.dev.smtp import SmtpSink
from exporter.errors import ConditionFailed
from exporter.exports.view import job_body
from exporter.jobs.sweep import sweep_jobs
from exporter.jobs.worker import build_worker_settings
from exporter.models import ExportJob, ExportMessageV1, JobState, utcnow
from exporter.resources import Resources, open_resources
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import new_job, without_smtp


def tuned(resources: Resources, **worker: Any) -> Resources:
    """The same clients with other worker settings (the sweeper reads only those)."""
    defaults = {"sweep_queued_grace_s": 5, "stale_after_s": 5}
    settings = resources.settings.model_copy(
        update={"worker": resources.settings.worker.model_copy(update={**defaults, **worker})}
    )
    return dataclasses.replace(resources, settings=settings)


async def beat(resources: Resources, job: ExportJob) -> None:
    """The running export's progress write, which is its heartbeat (attempt 1)."""
    await resources.jobs.record_progress(
        job.job_id, attempt=1, rows_exported=1, total_rows=10, now=utcnow()
    )


async def left_running_by_a_killed_worker(resources: Resources, job: ExportJob) -> None:
    """What ``kill -9`` leaves: the record in progress, arq's message and running marker."""
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, job.user_id))
    await resources.queue.redis.set(in_progress_key_prefix + job.job_id, b"1", px=600_000)
    await resources.jobs.transition(
        job.job_id,
        to=JobState.IN_PROGRESS,
        now=utcnow(),
        fields={"started_at": utcnow() - timedelta(seconds=60)},
        increment_attempts=True,
    )


@pytest.fixture(name="killed_run")
async def _fix_killed_run(resources: Resources, make_user: MakeUser) -> ExportJob:
    """A new user's export, left running by a killed worker (see above)."""
    user = await make_user()
    job = await new_job(resources, user.user_id)
    await left_running_by_a_killed_worker(resources, job)
    return job


async def test_a_queued_job_redis_lost_is_enqueued_again_and_delivered(
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 7)
    lost = await new_job(resources, user.user_id, age_s=30)  # never reached the queue
    fresh = await new_job(resources, user.user_id)  # the API may be enqueuing it right now

    report = await sweep_jobs(tuned(resources))

    assert lost.job_id in report.requeued_lost
    assert fresh.job_id not in report.requeued_lost
    assert (await resources.queue.probe(lost.job_id)).queued
    assert not (await resources.queue.probe(fresh.job_id)).queued
    await run_worker()
    done = await resources.jobs.get(lost.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED and done.row_count == 7
    assert len(smtp_sink.for_export(lost.job_id)) == 1


async def test_a_job_whose_worker_was_killed_is_started_again_at_once(
    resources: Resources,
    killed_run: ExportJob,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
) -> None:
    job = killed_run
    await seed_rows(job.user_id, 3)

    report = await sweep_jobs(tuned(resources))

    assert job.job_id in report.requeued_stale
    entry = await resources.queue.probe(job.job_id)
    assert entry.queued and not entry.running  # arq's stale marker is gone
    await run_worker()
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED and done.attempts == 2
    assert len(smtp_sink.for_export(job.job_id)) == 1


async def test_a_live_run_is_never_requeued(
    resources: Resources,
    killed_run: ExportJob,
) -> None:
    job = killed_run
    await beat(resources, job)  # ...but it is alive

    report = await sweep_jobs(tuned(resources))

    assert job.job_id not in report.requeued_stale and report.in_progress >= 1
    assert (await resources.queue.probe(job.job_id)).running


async def test_a_job_deferred_for_a_retry_is_left_to_arq(
    resources: Resources,
    killed_run: ExportJob,
) -> None:
    job = killed_run
    await resources.queue.redis.delete(in_progress_key_prefix + job.job_id)  # waiting, not running

    report = await sweep_jobs(tuned(resources))

    assert job.job_id not in report.requeued_stale


async def test_a_claim_loses_to_a_heartbeat_that_came_after_the_read(
    resources: Resources,
    killed_run: ExportJob,
) -> None:
    job = killed_run
    seen = await resources.jobs.get(job.job_id)
    assert seen is not None
    await beat(resources, job)

    with pytest.raises(ConditionFailed):
        await resources.jobs.claim_stale(seen, now=utcnow())


async def test_a_job_past_the_age_limit_fails_and_its_owner_is_told(
    resources: Resources, make_user: MakeUser, smtp_sink: SmtpSink
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id, age_s=7200)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))

    report = await sweep_jobs(tuned(resources, max_job_age_s=3600))

    assert job.job_id in report.failed
    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "timed_out" and failed.email_sent_at is not None
    assert not (await resources.queue.probe(job.job_id)).queued
    (notice,) = smtp_sink.for_export(job.job_id)
    assert notice["To"] == user.email
    body = notice.get_body(("plain",))
    assert body is not None and "took longer than we allow" in body.get_content()
    assert job.job_id in body.get_content()


async def test_a_job_that_keeps_losing_its_worker_is_given_up(
    resources: Resources,
    killed_run: ExportJob,
) -> None:
    job = killed_run

    await sweep_jobs(tuned(resources, max_tries=1))

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.error_code == "worker_lost"


async def test_only_active_jobs_are_in_the_active_index(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id)
    ids = [j.job_id async for j in resources.jobs.active(JobState.QUEUED)]
    assert job.job_id in ids

    await resources.jobs.transition(job.job_id, to=JobState.IN_PROGRESS, now=utcnow())
    assert job.job_id in [j.job_id async for j in resources.jobs.active(JobState.IN_PROGRESS)]
    await resources.jobs.transition(job.job_id, to=JobState.FAILED, now=utcnow())

    for state in (JobState.QUEUED, JobState.IN_PROGRESS):
        assert job.job_id not in [j.job_id async for j in resources.jobs.active(state)]


def test_the_sweeper_is_a_unique_cron_on_the_configured_interval(resources: Resources) -> None:
    every_10s = tuned(resources, sweep_every_s=10).settings
    (cron_job,) = [
        c for c in build_worker_settings(every_10s)["cron_jobs"] if c.name == "sweep_jobs"
    ]
    assert cron_job.unique is True
    assert cron_job.second == {0, 10, 20, 30, 40, 50}
    (default,) = [
        c for c in build_worker_settings(resources.settings)["cron_jobs"] if c.name == "sweep_jobs"
    ]
    # Shipped: every 10 s, so a dead worker's export waits for at most one more sweep.
    assert default.second == {0, 10, 20, 30, 40, 50} and default.minute is None


async def test_a_job_taken_by_a_worker_that_died_before_its_first_write_is_requeued(
    resources: Resources, make_user: MakeUser
) -> None:
    user = await make_user()
    sweeping = tuned(resources)
    marker_s = sweeping.settings.worker.in_progress_marker_s
    taken_long_ago, just_taken = (
        await new_job(resources, user.user_id, age_s=60),
        await new_job(resources, user.user_id, age_s=60),
    )
    for job, taken_s_ago in ((taken_long_ago, 30), (just_taken, 0.5)):
        await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))
        # arq's running marker, set with its full lifetime taken_s_ago seconds ago.
        ttl_ms = int((marker_s - taken_s_ago) * 1000)
        await resources.queue.redis.set(in_progress_key_prefix + job.job_id, b"1", px=ttl_ms)

    report = await sweep_jobs(sweeping)

    assert taken_long_ago.job_id in report.requeued_lost
    assert just_taken.job_id not in report.requeued_lost
    assert not (await resources.queue.probe(taken_long_ago.job_id)).running
    assert (await resources.queue.probe(just_taken.job_id)).running


async def test_a_stale_record_just_taken_by_a_new_worker_is_left_to_it(
    resources: Resources,
    killed_run: ExportJob,
) -> None:
    job = killed_run
    sweeping = tuned(resources)
    # ...then requeued, and a worker took the new message half a second ago.
    fresh_ms = int((sweeping.settings.worker.in_progress_marker_s - 0.5) * 1000)
    await resources.queue.redis.set(in_progress_key_prefix + job.job_id, b"1", px=fresh_ms)

    report = await sweep_jobs(sweeping)

    assert job.job_id not in report.requeued_stale


async def test_the_marker_lifetime_the_sweeper_assumes_is_the_one_arq_uses(
    resources: Resources,
) -> None:
    from arq.worker import Worker

    for job_timeout_s in (60, 1800):
        settings = tuned(resources, job_timeout_s=job_timeout_s).settings
        worker = Worker(**build_worker_settings(settings, handle_signals=False))
        assert worker.in_progress_timeout_s == settings.worker.in_progress_marker_s


# --- orphans: the worker process recorded on the job is gone ---------------------------------


async def run_by(resources: Resources, job: ExportJob, worker_id: str, *, quiet_s: float) -> None:
    """The run was started by worker process ``worker_id``, whose last heartbeat was
    ``quiet_s`` ago (its arq running marker, set at pick-up, is older still)."""
    beat_at = utcnow() - timedelta(seconds=quiet_s)
    await resources.jobs.transition(
        job.job_id,
        to=JobState.IN_PROGRESS,
        expected=(JobState.IN_PROGRESS,),
        now=beat_at,
        fields={
            "worker_id": worker_id,
            "started_at": beat_at - timedelta(seconds=1),
            "heartbeat_at": beat_at,
        },
    )


def without_staleness(resources: Resources, **worker: Any) -> Resources:
    """Sweeper settings under which only the orphan rule can requeue a running job."""
    return tuned(resources, stale_after_s=3600, liveness_ttl_s=15, **worker)


def a_worker_id() -> str:
    return f"test-host:{uuid.uuid4().hex[:8]}"


async def test_a_job_whose_worker_process_is_gone_is_requeued_without_waiting_for_staleness(
    resources: Resources,
    killed_run: ExportJob,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
) -> None:
    job = killed_run
    await seed_rows(job.user_id, 4)
    gone = a_worker_id()  # kill -9: its liveness key lapsed, nobody deleted it
    await run_by(resources, job, gone, quiet_s=16)

    report = await sweep_jobs(without_staleness(resources))

    assert job.job_id in report.requeued_orphaned
    assert job.job_id not in report.requeued_stale
    entry = await resources.queue.probe(job.job_id)
    assert entry.queued and not entry.running  # the killed run's marker is gone
    worker = await run_worker()
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED and done.attempts == 2
    assert done.worker_id == worker.ctx["worker_id"] != gone
    assert len(smtp_sink.for_export(job.job_id)) == 1


@pytest.mark.parametrize("quiet_s", [16, 120])
async def test_a_job_whose_worker_lives_is_not_requeued_however_slow(
    resources: Resources, killed_run: ExportJob, quiet_s: float
) -> None:
    job = killed_run
    slow = a_worker_id()
    await resources.queue.mark_worker_alive(slow, ttl_s=60)
    # Quiet past the liveness lifetime, and (120 s) past stale_after_s too: a DynamoDB
    # brownout eating its heartbeats, while arq still marks it running on a live worker.
    await run_by(resources, job, slow, quiet_s=quiet_s)

    report = await sweep_jobs(tuned(resources, stale_after_s=30, liveness_ttl_s=15))

    assert job.job_id not in report.requeued_orphaned + report.requeued_stale
    assert (await resources.queue.probe(job.job_id)).running
    kept = await resources.jobs.get(job.job_id)
    assert kept is not None and kept.attempts == 1 and kept.worker_id == slow


async def test_a_missing_liveness_key_is_not_enough_while_the_heartbeat_is_recent(
    resources: Resources, killed_run: ExportJob
) -> None:
    # Redis was wiped under a live worker: its key is gone for a few seconds, until the
    # next refresh, but the run's heartbeat in DynamoDB is fresh.
    job = killed_run
    await run_by(resources, job, a_worker_id(), quiet_s=3)

    report = await sweep_jobs(without_staleness(resources))

    assert job.job_id not in report.requeued_orphaned
    assert (await resources.queue.probe(job.job_id)).running


async def test_the_killed_runs_own_fresh_marker_does_not_hold_the_orphan_back(
    resources: Resources, killed_run: ExportJob
) -> None:
    # Killed 17 s after a worker took it: arq's marker is younger than stale_after_s, but
    # older than the recorded run's start, so it is that run's own, not a new delivery's.
    job = killed_run
    sweeping = without_staleness(resources)
    marker_s = sweeping.settings.worker.in_progress_marker_s
    await resources.queue.redis.set(
        in_progress_key_prefix + job.job_id, b"1", px=int((marker_s - 17.5) * 1000)
    )
    await run_by(resources, job, a_worker_id(), quiet_s=16)  # started 17 s ago

    report = await sweep_jobs(sweeping)

    assert job.job_id in report.requeued_orphaned


async def test_an_orphan_a_new_worker_just_took_is_left_to_it(
    resources: Resources, killed_run: ExportJob
) -> None:
    # Requeued by an earlier sweep, then taken half a second ago by a new worker that has
    # not written its start yet: the record still names the dead worker.
    job = killed_run
    sweeping = without_staleness(resources)
    await run_by(resources, job, a_worker_id(), quiet_s=20)
    fresh_ms = int((sweeping.settings.worker.in_progress_marker_s - 0.5) * 1000)
    await resources.queue.redis.set(in_progress_key_prefix + job.job_id, b"1", px=fresh_ms)

    report = await sweep_jobs(sweeping)

    assert job.job_id not in report.requeued_orphaned
    assert (await resources.queue.probe(job.job_id)).running


async def test_two_sweepers_racing_over_orphans_requeue_each_once(
    resources: Resources, settings: Settings, make_user: MakeUser
) -> None:
    orphans = []
    for _ in range(5):
        job = await new_job(resources, (await make_user()).user_id)
        await left_running_by_a_killed_worker(resources, job)
        await run_by(resources, job, a_worker_id(), quiet_s=20)
        orphans.append(job.job_id)
    async with open_resources(settings) as other_process:
        first, second = await asyncio.gather(
            sweep_jobs(without_staleness(resources)),
            sweep_jobs(without_staleness(other_process)),
        )

    for export_id in orphans:
        claims = first.requeued_orphaned.count(export_id) + second.requeued_orphaned.count(
            export_id
        )
        assert claims == 1, export_id
        entry = await resources.queue.probe(export_id)
        assert entry.queued and not entry.running
        record = await resources.jobs.get(export_id)
        assert record is not None and record.attempts == 1  # claimed, not yet started again


async def test_of_two_claims_on_the_same_read_one_wins(
    resources: Resources, killed_run: ExportJob
) -> None:
    await run_by(resources, killed_run, a_worker_id(), quiet_s=20)
    seen = await resources.jobs.get(killed_run.job_id)
    assert seen is not None

    outcomes = await asyncio.gather(
        resources.jobs.claim_stale(seen, now=utcnow()),
        resources.jobs.claim_stale(seen, now=utcnow()),
        return_exceptions=True,
    )

    assert sorted(type(o).__name__ for o in outcomes) == ["ConditionFailed", "ExportJob"]


async def test_a_notice_the_sweeper_could_not_send_is_retried_until_it_goes_out(
    resources: Resources, make_user: MakeUser, smtp_sink: SmtpSink, run_worker: RunWorker
) -> None:
    user = await make_user()
    job = await new_job(resources, user.user_id, age_s=7200)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))

    # The mail service is down when the sweeper gives the export up.
    await sweep_jobs(without_smtp(tuned(resources, max_job_age_s=3600)))

    failed = await resources.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobState.FAILED
    assert failed.error_code == "timed_out" and failed.email_sent_at is None
    # Like a run's notice (docs/reliability.md, "Failure notice"): pending, and retried.
    assert job_body(failed)["failure_notice"] == "pending"
    assert (await resources.queue.probe(job.job_id)).queued

    # The mail service is back: a worker takes the retry and sends exactly one notice.
    await run_worker()
    (notice,) = smtp_sink.for_export(job.job_id)
    assert notice["To"] == user.email
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.email_sent_at is not None
    assert job_body(done)["failure_notice"] == "sent"
