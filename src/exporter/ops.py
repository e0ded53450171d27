"""Operator commands: look at export jobs and the queue, retry a failed export, cancel a
queued or running one. ``exporter jobs list|show|retry|cancel`` and ``exporter queue stats``.

The job record in DynamoDB is the truth about an export; the arq queue in Redis only holds
the message that makes a worker run it. Retry and cancel change the record with conditional
updates first and only then touch the queue, so racing a worker can never leave an export
both finished and running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Coroutine
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix
from arq.constants import retry_key_prefix as arq_retry_key_prefix

from exporter.api.exports import job_body
from exporter.cancellation import CANCELLED_BY_OPERATOR, AlreadyFinished, ExportGone, cancel_export
from exporter.cli import CliError
from exporter.config import Settings
from exporter.errors import ConditionFailed
from exporter.metrics import queue_snapshot
from exporter.models import ExportJob, ExportMessageV1, JobState, utcnow
from exporter.queue import QueueUnavailable
from exporter.resources import Resources, open_resources

LIST_LIMIT_DEFAULT = 50


class OpsError(CliError):
    """An operator command refused, with the reason in one sentence."""


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


async def queue_state(redis: ArqRedis, queue: str, job_id: str) -> dict[str, Any]:
    """What arq holds for one job id: queued (and since when), running, retry count, result."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(queue, job_id)
        pipe.exists(in_progress_key_prefix + job_id)
        pipe.get(arq_retry_key_prefix + job_id)
        pipe.exists(result_key_prefix + job_id)
        score, running, tries, result = await pipe.execute()
    return {
        "queued": score is not None,
        "queued_since_ms": int(score) if score is not None else None,
        "running": bool(running),
        "tries": int(tries) if tries is not None else 0,
        "result_kept": bool(result),
    }


async def show_job(resources: Resources, job_id: str) -> dict[str, Any]:
    job = await _get(resources, job_id)
    body = job_body(job)
    body["user_id"] = job.user_id
    body["queue"] = await queue_state(
        resources.queue.redis, resources.settings.redis.queue_name, job.job_id
    )
    return body


async def retry_job(resources: Resources, job_id: str) -> ExportJob:
    """Put a failed export back on the queue, as if just requested (same id, same user)."""
    job = await _get(resources, job_id)
    if job.status is not JobState.FAILED:
        raise OpsError(f"only failed exports can be retried; {job_id} is {job.status.value}")
    redis = resources.queue.redis
    # arq refuses a job id while it keeps the previous run's result; our record holds it.
    await redis.delete(result_key_prefix + job_id)
    try:
        job = await resources.jobs.requeue_failed(job_id, now=utcnow())
    except ConditionFailed:
        raise OpsError(f"{job_id} changed while retrying it; look again") from None
    message = ExportMessageV1(
        export_id=job.job_id, user_id=job.user_id, request_id=f"ops-retry-{uuid.uuid4().hex}"
    )
    try:
        await resources.queue.enqueue_export(message)
    except QueueUnavailable as exc:
        now = utcnow()
        await resources.jobs.transition(
            job_id,
            to=JobState.FAILED,
            expected=(JobState.QUEUED,),
            now=now,
            fields={
                "finished_at": now,
                "error_code": "enqueue_failed",
                "error_message": "an operator's retry could not be queued",
            },
        )
        raise OpsError(f"the queue is unavailable ({exc}); {job_id} stays failed") from None
    return job


async def cancel_job(resources: Resources, job_id: str) -> ExportJob:
    """Cancel a queued or running export (``cancelled``, error code ``cancelled_by_operator``)
    and abort its arq job: the same path as the owner's DELETE /v1/exports/{id}."""
    job = await _get(resources, job_id)
    try:
        return await cancel_export(resources, job, by_operator=True)
    except AlreadyFinished as exc:
        raise OpsError(
            f"only queued or running exports can be cancelled; {job_id} is {exc.job.status.value}"
        ) from None
    except ExportGone:
        raise OpsError(f"no export {job_id}") from None


async def workers_alive(redis: ArqRedis, queue: str) -> dict[str, str]:
    """Health keys of live workers on ``queue`` (one per process; they expire when it stops)."""
    found: dict[str, str] = {}
    prefix = f"{queue}:health-check:"
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode()
        value = await redis.get(name)
        if value is not None:
            found[name[len(prefix) :]] = value.decode()
    return found


async def queue_stats(resources: Resources) -> dict[str, Any]:
    redis, queue = resources.queue.redis, resources.settings.redis.queue_name
    snapshot = await queue_snapshot(redis, queue)
    workers = await workers_alive(redis, queue)
    return {**snapshot.as_dict(), "workers_alive": len(workers), "workers": workers}


async def _get(resources: Resources, job_id: str) -> ExportJob:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise OpsError(f"{job_id!r} is not an export id (a UUID)") from None
    job = await resources.jobs.get(job_id)
    if job is None:
        raise OpsError(f"no export {job_id}")
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
    stats.set_defaults(func=cmd_queue_stats)


def _with_resources(settings: Settings, work: Any) -> Any:
    async def go() -> Any:
        async with open_resources(settings, pg_min_size=0, export_reads=False) as resources:
            coro: Coroutine[Any, Any, Any] = work(resources)
            return await coro

    return asyncio.run(go())


def cmd_jobs_list(settings: Settings, args: argparse.Namespace) -> int:
    status = JobState(args.status) if args.status else None
    jobs: list[ExportJob] = _with_resources(
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
    print(json.dumps(_with_resources(settings, lambda r: show_job(r, args.job_id)), indent=2))
    return 0


def cmd_jobs_retry(settings: Settings, args: argparse.Namespace) -> int:
    job: ExportJob = _with_resources(settings, lambda r: retry_job(r, args.job_id))
    print(f"{job.job_id} is queued again")
    return 0


def cmd_jobs_cancel(settings: Settings, args: argparse.Namespace) -> int:
    job: ExportJob = _with_resources(settings, lambda r: cancel_job(r, args.job_id))
    print(f"{job.job_id} cancelled ({CANCELLED_BY_OPERATOR})")
    return 0


def cmd_queue_stats(settings: Settings, args: argparse.Namespace) -> int:
    stats: dict[str, Any] = _with_resources(settings, queue_stats)
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
