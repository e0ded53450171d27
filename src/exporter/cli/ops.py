"""Operator commands: look at export jobs and the queue, retry a failed export, cancel a
queued or running one. ``exporter jobs list|show|retry|cancel`` and ``exporter queue stats``.

The job record in DynamoDB is the truth about an export; the arq queue in Redis only holds
the message that makes a worker run it. Retry and cancel change the record with conditional
updates first and only then touch the queue, so racing a worker can never leave an export
both finished and running.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from exporter.cli.common import with_resources
from exporter.config import Settings
from exporter.errors import (
    CommandError,
    ExportNotFound,
    NotRetryable,
    QueueUnavailable,
)
from exporter.exports.cancel import AlreadyFinished, cancel_export
from exporter.exports.lifecycle import CANCELLED_BY_OPERATOR
from exporter.exports.retry import retry_export
from exporter.exports.view import job_body
from exporter.models import ExportJob, JobState
from exporter.queue import job_state, queue_snapshot, workers_alive
from exporter.resources import Resources

LIST_LIMIT_DEFAULT = 50


# --- what the commands do -------------------------------------------------------------------


async def list_jobs(
    resources: Resources,
    *,
    user_id: str | None = None,
    status: JobState | None = None,
    limit: int = LIST_LIMIT_DEFAULT,
) -> list[ExportJob]:
    """Jobs newest first: one user's (an index query) or everyone's (a table scan)."""
    if user_id is None:
        jobs = await resources.jobs.scan(status=status, limit=limit)
    else:
        jobs, cursor = [], None
        while len(jobs) < limit:
            page = await resources.jobs.list_for_user(user_id, limit=100, cursor=cursor)
            jobs.extend(j for j in page.jobs if status is None or j.status is status)
            cursor = page.next_cursor
            if cursor is None:
                break
    return sorted(jobs, key=lambda j: j.created_at, reverse=True)[:limit]


async def show_job(resources: Resources, job_id: str) -> dict[str, Any]:
    job = await _get(resources, job_id)
    body = job_body(job)
    body["user_id"] = job.user_id
    queue = resources.queue.queue_for(large=job.large)
    body["queue"] = {"name": queue, **await job_state(resources.queue.redis, queue, job.job_id)}
    # The worker process of the current run, and whether it still lives (the sweeper
    # restarts a running job whose worker is gone).
    body["worker"] = (
        None
        if job.worker_id is None
        else {"id": job.worker_id, "alive": await resources.queue.worker_alive(job.worker_id)}
    )
    return body


async def retry_job(resources: Resources, job_id: str) -> ExportJob:
    """Put a failed export back on the queue, as if just requested (same id, same user)."""
    job = await _get(resources, job_id)
    try:
        return await retry_export(resources, job)
    except NotRetryable as exc:
        raise CommandError(str(exc)) from None
    except QueueUnavailable as exc:
        raise CommandError(f"the queue is unavailable ({exc}); {job_id} stays failed") from None


async def cancel_job(resources: Resources, job_id: str) -> ExportJob:
    """Cancel a queued or running export (``cancelled``, error code ``cancelled_by_operator``)
    and abort its arq job: the same path as the owner's DELETE /v1/exports/{id}."""
    job = await _get(resources, job_id)
    try:
        return await cancel_export(resources, job, by_operator=True)
    except AlreadyFinished as exc:
        raise CommandError(
            f"only queued or running exports can be cancelled; {job_id} is {exc.job.status.value}"
        ) from None
    except ExportNotFound:
        raise CommandError(f"no export {job_id}") from None


async def queue_stats(resources: Resources, *, large: bool = False) -> dict[str, Any]:
    redis, queue = resources.queue.redis, resources.queue.queue_for(large=large)
    snapshot = await queue_snapshot(redis, queue)
    workers = await workers_alive(redis, queue)
    return {**snapshot.as_dict(), "workers_alive": len(workers), "workers": workers}


async def _get(resources: Resources, job_id: str) -> ExportJob:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise CommandError(f"{job_id!r} is not an export id (a UUID)") from None
    job = await resources.jobs.get(job_id)
    if job is None:
        raise CommandError(f"no export {job_id}")
    return job


# --- the command line -----------------------------------------------------------------------


def add_ops_parsers(sub: Any) -> None:
    """Register ``jobs`` and ``queue`` on the ``exporter`` command's subparsers."""
    jobs = sub.add_parser("jobs", help="export jobs (operators)").add_subparsers(
        dest="jobs_command", required=True
    )
    listing = jobs.add_parser("list", help="jobs, newest first")
    listing.add_argument("--user", help="only this user's jobs (user id)")
    listing.add_argument("--status", choices=[s.value for s in JobState])
    listing.add_argument("--limit", type=int, default=LIST_LIMIT_DEFAULT)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_jobs_list)
    for name, text, func in (
        ("show", "one job: its record and what the queue holds for it", cmd_jobs_show),
        ("retry", "put a failed job back on the queue", cmd_jobs_retry),
        ("cancel", "cancel a queued or running job (cancelled_by_operator)", cmd_jobs_cancel),
    ):
        p = jobs.add_parser(name, help=text)
        p.add_argument("job_id")
        p.set_defaults(func=func)
    queue = sub.add_parser("queue", help="the arq queue (operators)").add_subparsers(
        dest="queue_command", required=True
    )
    stats = queue.add_parser("stats", help="depth, in progress, oldest age, workers alive")
    stats.add_argument("--json", action="store_true")
    stats.add_argument(
        "--queue", choices=("default", "large"), default="default", help="which queue"
    )
    stats.set_defaults(func=cmd_queue_stats)


def cmd_jobs_list(settings: Settings, args: argparse.Namespace) -> int:
    status = JobState(args.status) if args.status else None
    jobs: list[ExportJob] = with_resources(
        settings,
        lambda r: list_jobs(r, user_id=args.user, status=status, limit=args.limit),
    )
    if args.json:
        for job in jobs:
            print(json.dumps({**job_body(job), "user_id": job.user_id}))
        return 0
    print(f"{'ID':36}  {'USER':36}  {'STATUS':11}  {'CREATED':20}  TRIES  {'ROWS':>8}  ERROR")
    for job in jobs:
        rows = "" if job.row_count is None else str(job.row_count)
        print(
            f"{job.job_id:36}  {job.user_id:36}  {job.status.value:11}  "
            f"{job.created_at:%Y-%m-%dT%H:%M:%SZ}  {job.attempts:5}  {rows:>8}  "
            f"{job.error_code or ''}"
        )
    return 0


def cmd_jobs_show(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(with_resources(settings, lambda r: show_job(r, args.job_id)), indent=2))
    return 0


def cmd_jobs_retry(settings: Settings, args: argparse.Namespace) -> int:
    job: ExportJob = with_resources(settings, lambda r: retry_job(r, args.job_id))
    print(f"{job.job_id} is queued again")
    return 0


def cmd_jobs_cancel(settings: Settings, args: argparse.Namespace) -> int:
    job: ExportJob = with_resources(settings, lambda r: cancel_job(r, args.job_id))
    print(f"{job.job_id} cancelled ({CANCELLED_BY_OPERATOR})")
    return 0


def cmd_queue_stats(settings: Settings, args: argparse.Namespace) -> int:
    large = getattr(args, "queue", "default") == "large"
    stats: dict[str, Any] = with_resources(settings, lambda r: queue_stats(r, large=large))
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"queue              {stats['queue']}")
    print(f"jobs               {stats['jobs']}")
    print(f"ready              {stats['ready']}")
    print(f"in progress        {stats['in_progress']}")
    print(f"deferred           {stats['deferred']}")
    print(f"oldest ready age   {stats['oldest_ready_age_s']:.1f} s")
    print(f"operator cancels   {stats['operator_cancellations']}")
    print(f"workers alive      {stats['workers_alive']}")
    for name, health in sorted(stats["workers"].items()):
        print(f"  {name}: {health}")
    return 0
