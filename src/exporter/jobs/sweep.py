"""Cron: the recovery sweeper. DynamoDB says what must happen; Redis only delivers it.

Each run reads the live jobs from the sparse active index (never the whole table) and
repairs what the queue lost:

- ``queued`` for longer than a grace period but absent from the arq queue (Redis restarted
  empty, failed over before replicating, or the API died between writing the record and
  enqueuing), or marked running by arq for longer than ``stale_after_s`` although a live
  run moves it to ``in_progress`` at once (its worker died in between): enqueue it again.
- ``in_progress`` and **orphaned**: the worker process recorded on the job (``worker_id``)
  no longer keeps its liveness key (``worker.liveness_ttl_s``, 15 s) and the run's own
  heartbeat has been quiet as long: the process died (``kill -9``, OOM, a lost node).
  Clear arq's leftovers (after ``kill -9`` arq keeps its running marker until
  ``job_timeout`` + 10 s) and enqueue it again, so another worker starts over within
  seconds, whatever the job's size or timeout.
- ``in_progress`` with a stale heartbeat (``worker.stale_after_s``, 30 s) and no live worker
  running it (recorded without a worker id, or arq lost the message while its worker
  lives), while arq either lost the message or still marks it running: the same repair.
  A run whose worker lives and which arq still marks running is never taken from it, however
  quiet (a slow step, a DynamoDB brownout eating heartbeats): arq's job timeout bounds it.
- too old (``worker.max_job_age_s``), or stale after ``worker.max_tries`` runs lost to dying
  workers (runs that ended in a scheduled retry do not count): ``failed``
  with a reason, and the user gets the failure notice.

Two regions (``Settings.region``; ``regions.py``): a sweep repairs only this region's jobs,
and a failed region's once an operator declared it failed, re-homing each with the same
conditional claim; another healthy region's jobs are counted (``other_region``) and left to
it. A region declared failed itself repairs nothing.

A live run is never started twice: its progress write refreshes ``heartbeat_at`` every
``exports.progress_interval_s`` while it streams and mails (``jobs/progress.py``), a
missing liveness key alone (Redis wiped) is not enough while that heartbeat is recent, a
message a new worker took after the recorded run began is left to it, and every requeue
first *claims* the record with a conditional write on exactly the status, attempts and
heartbeat the sweep read, so a run that started or beat meanwhile wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from exporter.delivery.notice import send_failure_notice
from exporter.errors import ConditionFailed, QueueUnavailable, StoreError
from exporter.exports import lifecycle
from exporter.exports.message import export_message
from exporter.jobs.ownership import failed_regions, may_sweep_here, new_home
from exporter.jobs.run import backoff_delay
from exporter.metrics import observe_export_finished, observe_sweep, observe_sweeper_action
from exporter.models import ExportJob, JobState, utcnow
from exporter.queue import QueueEntry
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.jobs.sweep")

TIMED_OUT = "timed_out"
WORKER_LOST = "worker_lost"
# A delivery of the recorded run took arq's running marker before that run wrote its
# start; a marker taken this much later than the start belongs to a newer delivery. Covers
# clock skew between hosts; a newer delivery comes at least liveness_ttl_s after the start.
_TAKEN_AFTER_START_SLACK_S = 5


@dataclass
class SweepReport:
    """What one sweep saw and did (also the cron job's result in arq)."""

    queued: int = 0
    in_progress: int = 0
    requeued_lost: list[str] = field(default_factory=list)
    requeued_stale: list[str] = field(default_factory=list)
    requeued_orphaned: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # Two regions: jobs another (healthy) region owns, left to it; jobs taken over from a
    # region declared failed (also counted in the requeued lists).
    other_region: int = 0
    taken_over: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "in_progress": self.in_progress,
            "requeued_lost": len(self.requeued_lost),
            "requeued_stale": len(self.requeued_stale),
            "requeued_orphaned": len(self.requeued_orphaned),
            "failed": len(self.failed),
            "other_region": self.other_region,
            "taken_over": len(self.taken_over),
        }


async def sweep_jobs(resources: Resources, *, now: datetime | None = None) -> SweepReport:
    """One pass over the active jobs; safe to run concurrently with workers and itself."""
    now = now or utcnow()
    report = SweepReport()
    try:
        failed = await failed_regions(resources)
        await _sweep_queued(resources, now, report, failed)
        await _sweep_in_progress(resources, now, report, failed)
    except Exception:
        observe_sweep(ok=False)
        log.exception("sweep.failed", **report.as_dict())
        raise
    observe_sweep(ok=True, queued=report.queued, in_progress=report.in_progress)
    log.info("sweep.done", **report.as_dict())
    return report


async def _sweep_queued(
    resources: Resources, now: datetime, report: SweepReport, failed: frozenset[str]
) -> None:
    worker = resources.settings.worker
    grace = timedelta(seconds=worker.sweep_queued_grace_s)
    too_old = now - timedelta(seconds=worker.max_job_age_s)
    async for job in resources.jobs.active(JobState.QUEUED):
        if not may_sweep_here(resources, job, failed):
            report.other_region += 1  # its own region's sweeper repairs it
            continue
        report.queued += 1
        # updated_at is when it entered the queue (created, or retried by an operator).
        queued_at = job.updated_at or job.created_at
        if queued_at < too_old:
            await _give_up(resources, job, TIMED_OUT, "the export waited too long to start")
            report.failed.append(job.job_id)
            continue
        if queued_at > now - grace:
            continue  # the API may be between writing the record and enqueuing it
        entry = await resources.queue.probe(job.job_id, marker_ttl_s=worker.in_progress_marker_s)
        if entry.queued and not entry.running:
            continue  # waiting for a free worker, or deferred for a retry
        if entry.running and (entry.running_for_s or 0) < worker.stale_after_s:
            continue  # just taken: the run moves the record to in_progress at once
        # Lost by Redis, or taken by a worker that died before its first write (arq would
        # keep it marked running for job_timeout + 10 s), or homed in a failed region.
        if await _requeue(resources, job, now, report, failed):
            observe_sweeper_action("requeued_lost")
            report.requeued_lost.append(job.job_id)


async def _sweep_in_progress(
    resources: Resources, now: datetime, report: SweepReport, failed: frozenset[str]
) -> None:
    worker = resources.settings.worker
    too_old = now - timedelta(seconds=worker.max_job_age_s)
    async for job in resources.jobs.active(JobState.IN_PROGRESS):
        if not may_sweep_here(resources, job, failed):
            report.other_region += 1  # its own region's sweeper repairs it
            continue
        report.in_progress += 1
        last_sign = job.heartbeat_at or job.started_at or job.updated_at or job.created_at
        quiet_s = (now - last_sign).total_seconds()
        stale = quiet_s >= worker.stale_after_s
        if not stale and (job.worker_id is None or quiet_s < worker.liveness_ttl_s):
            continue  # it beat recently, or nothing but its heartbeat can tell
        entry = await resources.queue.probe(job.job_id, marker_ttl_s=worker.in_progress_marker_s)
        if entry.queued and not entry.running:
            # Deferred for a retry (no heartbeat while it waits) or cancelled by a worker's
            # shutdown and ready for the next one: arq will run it; nothing to repair.
            continue
        if _newly_taken(entry, job, now, worker.stale_after_s):
            # A worker took it moments ago (a re-run of a requeued job): its first write
            # and heartbeat are on their way. Seen in the burst test under backlog.
            continue
        worker_alive = job.worker_id is not None and await resources.queue.worker_alive(
            job.worker_id
        )
        if worker_alive and (entry.running or not stale):
            # Quiet, but its worker process lives and arq says it still runs the job (a
            # slow step, a DynamoDB brownout eating heartbeats): never taken from it. arq's
            # job timeout bounds a run that truly hangs; a stalled process loses its key.
            continue
        if job.created_at < too_old:
            await _give_up(resources, job, TIMED_OUT, "the export did not finish in time")
            report.failed.append(job.job_id)
        elif job.attempts - job.retries >= worker.max_tries:
            # Runs that ended in a scheduled retry (an outage waited out) are not lost ones.
            await _give_up(
                resources,
                job,
                WORKER_LOST,
                f"the worker stopped during each of {job.attempts - job.retries} attempts",
            )
            report.failed.append(job.job_id)
        elif await _requeue(resources, job, now, report, failed):
            orphaned = job.worker_id is not None and not worker_alive
            observe_sweeper_action("requeued_orphaned" if orphaned else "requeued_stale")
            (report.requeued_orphaned if orphaned else report.requeued_stale).append(job.job_id)


def _newly_taken(entry: QueueEntry, job: ExportJob, now: datetime, within_s: float) -> bool:
    """arq marks the message running for a delivery that has not written its start yet: a
    worker took it less than ``within_s`` ago *and* after the recorded run began (the
    recorded run's own marker, left by its killed worker, is older than its start)."""
    if not entry.running:
        return False
    running_for = entry.running_for_s or 0.0  # unknown: assume just taken
    if running_for >= within_s:
        return False
    if job.started_at is None:
        return True
    taken_at = now - timedelta(seconds=running_for)
    return taken_at > job.started_at + timedelta(seconds=_TAKEN_AFTER_START_SLACK_S)


async def _requeue(
    resources: Resources,
    job: ExportJob,
    now: datetime,
    report: SweepReport,
    failed: frozenset[str] = frozenset(),
) -> bool:
    """Claim the record as read, then put the job back on the queue from a clean slate. A
    job of a failed region is re-homed here by the same claim (a takeover)."""
    rehome = new_home(resources, job, failed)
    try:
        await resources.jobs.claim_stale(job, now=now, rehome=rehome)
    except ConditionFailed:
        log.info("sweep.claim_lost", export_id=job.job_id, status=job.status.value)
        return False
    await resources.queue.requeue_export(export_message(job), large=job.large)
    if rehome is not None:
        report.taken_over.append(job.job_id)
        log.warning("sweep.taken_over", export_id=job.job_id, from_region=job.home_region)
    log.warning(
        "sweep.requeued",
        export_id=job.job_id,
        user_id=job.user_id,
        status=job.status.value,
        attempts=job.attempts,
        large=job.large,
    )
    return True


async def _give_up(resources: Resources, job: ExportJob, code: str, message: str) -> None:
    try:
        failed = await lifecycle.mark_failed(
            resources.jobs, job.job_id, code=code, message=message, expected=(job.status,)
        )
    except ConditionFailed:
        # Moved on by itself meanwhile, or its file already went out: then it succeeded
        # (failing it would let the expiry cron delete the file the user was sent).
        current = await resources.jobs.get(job.job_id)
        if (
            current is not None
            and current.delivered_at is not None
            and current.status is JobState.IN_PROGRESS
        ):
            await lifecycle.finish_already_sent(resources.jobs, current)
            await resources.queue.withdraw(job.job_id)
        return
    await resources.queue.withdraw(job.job_id)
    observe_sweeper_action("failed_too_old")
    observe_export_finished("failed", code)
    log.warning("export.failed", export_id=job.job_id, error_code=code, error=message)
    if await send_failure_notice(resources, failed) == "failed":
        await _retry_notice_later(resources, failed)


async def _retry_notice_later(resources: Resources, job: ExportJob) -> None:
    """The mail service could not take the notice: as for a run's notice, the job says it is
    pending and a deferred message retries it (``jobs/run.py``, ``_notify``: the same backoff
    within the retry budget counted from the failure). Best effort, like the notice itself."""
    worker = resources.settings.worker
    delay = backoff_delay(1, base_s=worker.retry_base_s, cap_s=worker.retry_cap_s)
    try:
        await lifecycle.record_notice_pending(
            resources.jobs, job.job_id, next_attempt_at=utcnow() + timedelta(seconds=delay)
        )
        # Clears what arq keeps of the killed run (its running marker) before enqueuing.
        await resources.queue.requeue_export(export_message(job), large=job.large, defer_s=delay)
    except (StoreError, QueueUnavailable) as exc:
        log.warning("sweep.notice_retry_unscheduled", export_id=job.job_id, error=str(exc))
