"""Creating an export: the one-active-export rule, idempotency keys, the daily quota, and
recording the job before its message is queued.

    create_export(resources, user_id, ExportRequest(...), idempotency_key=..., request_id=...)
        -> Created(job)       recorded and queued just now
         | Active(job)        the user already has a queued or running export: that one
         | Replayed(job, n)   the key was seen: the export it named, as it is now, and the
                              status code (202 or 200) the first answer had

Refusals are ``ExportRefused`` (``QuotaExceeded``, ``IdempotencyKeyReused``,
``CreateContended``); a store or queue that fails raises ``StoreError`` / ``QueueUnavailable``
(the record of an export that could not be queued is closed first, so nothing is left
half-done). The API, the operator CLI and a scheduler all call ``create_export``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from exporter.errors import (
    ConditionFailed,
    CreateContended,
    IdempotencyKeyReused,
    QueueUnavailable,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
    WriteConflict,
)
from exporter.exports.lifecycle import ENQUEUE_FAILED, mark_enqueue_failed
from exporter.exports.message import export_message
from exporter.metrics import observe_export_created, observe_export_finished
from exporter.models import ExportFormat, ExportJob, utcnow
from exporter.resources import Resources
from exporter.selection import ALL, ExportSelection
from exporter.store.idempotency import KeyRecord, request_fingerprint
from exporter.store.jobs import SlotTaken, UserSlot
from exporter.store.memberships import estimate_rows

log = structlog.stdlib.get_logger("exporter.exports.create")

# A create re-reads and tries again when a concurrent one changed what it read; more rounds
# than this means heavy contention on one user's slot (``CreateContended``, retryable).
CREATE_ROUNDS = 4
QUOTA_WINDOW_S = 24 * 3600
# Bound on the size count at create: a slow PostgreSQL must not hold the request long.
ESTIMATE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What the user asked for (validated by the caller)."""

    fmt: ExportFormat = ExportFormat.CSV
    bom: bool = False
    # Set by the scheduler (exporter.schedules.run): the job records which schedule made it.
    # Not part of ``options()``: it does not change what the file holds.
    schedule_id: str | None = None
    # Columns, row filters and time zone (issue 17); the default is the whole export.
    selection: ExportSelection = ALL

    def options(self) -> dict[str, Any]:
        """The request's meaning as plain data (what an idempotency key's fingerprint hashes)."""
        options: dict[str, Any] = {"format": self.fmt.value, "bom": self.bom}
        if not self.selection.is_all:
            # Only when chosen, so a plain request keeps the fingerprint it always had.
            options["selection"] = self.selection.to_dict()
        return options


@dataclass(frozen=True, slots=True)
class Created:
    job: ExportJob


@dataclass(frozen=True, slots=True)
class Active:
    job: ExportJob


@dataclass(frozen=True, slots=True)
class Replayed:
    job: ExportJob
    status: int


CreateResult = Created | Active | Replayed


async def create_export(
    resources: Resources,
    user_id: str,
    request: ExportRequest,
    *,
    idempotency_key: str | None = None,
    request_id: str | None = None,
) -> CreateResult:
    """Record and queue a new export for ``user_id``, unless one is active or the key was
    seen (see the module docstring)."""
    fingerprint = request_fingerprint(request.options())
    for _ in range(CREATE_ROUNDS):
        decided = await _decide(resources, user_id, request, idempotency_key, fingerprint)
        if decided is not None:
            break
    else:
        raise CreateContended(
            "Other requests are creating an export for you right now. Please retry."
        )
    if not isinstance(decided, ExportJob):
        return decided
    job = decided
    structlog.contextvars.bind_contextvars(export_id=job.job_id)
    # The request id rides along so the worker's log lines for this export carry it too.
    message = export_message(job, request_id=request_id)
    try:
        await resources.queue.enqueue_export(message, large=job.large)
    except QueueUnavailable as exc:
        await _abandon(resources, job, str(exc), idempotency_key=idempotency_key)
        raise
    log.info(
        "export.created",
        format=job.format.value,
        estimated_rows=job.estimated_rows,
        queue=resources.queue.queue_for(large=job.large),
    )
    observe_export_created(job.format.value)
    return Created(job)


async def _decide(
    resources: Resources,
    user_id: str,
    request: ExportRequest,
    key: str | None,
    fingerprint: str,
) -> Active | Replayed | ExportJob | None:
    """One round of a create: an answer (a replay, or the active export), the new job
    (recorded, not yet queued), or None when a concurrent request changed what this one
    read, so the caller reads again."""
    settings = resources.settings.exports
    now = utcnow()
    if key is not None:
        record = await resources.idempotency.get(user_id, key, now=now)
        if record is not None:
            return await _replay(resources, user_id, key, record, fingerprint)
    # One read (the slot: the job it names, and the user's recent creates) and one
    # transaction (the job, the slot, and a check that the slot's job is finished, which
    # hands back that job when it is not) make a create: the quota is counted from the slot
    # and the one-active-export rule is checked inside the write.
    slot = await resources.jobs.read_slot(user_id)
    recent = await _recent_creates(resources, user_id, slot, now=now)
    try:
        check_quota(recent, max_per_day=settings.max_per_day, now=now)
    except QuotaExceeded:
        # While an export is active a create answers with it, quota or not.
        current = None if slot.job_id is None else await resources.jobs.get(slot.job_id)
        if current is not None and current.status.is_active:
            return await _active(resources, user_id, current, key, fingerprint, now=now)
        raise
    estimated_rows = await _estimate_rows(resources, user_id)
    if estimated_rows is None and settings.routes_by_size and slot.estimated_rows is not None:
        # The count could not answer in time (the morning of the 1st: hundreds of creates
        # at once): route by the size counted for the user's last export, kept on the
        # slot, rather than send a possibly huge export to the small exports' queue.
        estimated_rows = slot.estimated_rows
        log.info("export.size_from_last_export", estimated_rows=estimated_rows)
    large = (
        settings.routes_by_size
        and estimated_rows is not None
        and estimated_rows > settings.large_threshold_rows
    )
    job = ExportJob.new(
        user_id=user_id,
        fmt=request.fmt,
        bom=request.bom,
        selection=request.selection,
        estimated_rows=estimated_rows,
        large=large,
        schedule_id=request.schedule_id,
        now=now,
        # The record outlives the file, so a late download gets 410 rather than 404.
        retention_s=(settings.retention_days + settings.record_grace_days) * 86_400,
    )
    also = []
    if key is not None:
        also.append(
            resources.idempotency.put_item(
                user_id, key, job_id=job.job_id, status=202, fingerprint=fingerprint, now=now
            )
        )
    try:
        await resources.jobs.create_exclusive(
            job, previous=slot.job_id, recent={**recent, job.job_id: now}, also=also
        )
    except SlotTaken as taken:
        return await _active(resources, user_id, taken.active, key, fingerprint, now=now)
    except (ConditionFailed, WriteConflict):
        return None
    return job


async def _active(
    resources: Resources,
    user_id: str,
    active: ExportJob,
    key: str | None,
    fingerprint: str,
    *,
    now: datetime,
) -> Active | None:
    """The user's active export is the answer (200); a key remembers that answer."""
    if key is not None:
        try:
            await resources.idempotency.put(
                user_id, key, job_id=active.job_id, status=200, fingerprint=fingerprint, now=now
            )
        except ConditionFailed:
            return None  # the same key, in a request running beside this one
    log.info("export.already_active", export_id=active.job_id)
    return Active(active)


async def _recent_creates(
    resources: Resources, user_id: str, slot: UserSlot, *, now: datetime
) -> dict[str, datetime]:
    """The user's exports that count against the quota now (job id -> created at): from the
    slot, or, for a slot written before it kept them, from the jobs (an index query)."""
    since = now - timedelta(seconds=QUOTA_WINDOW_S)
    if slot.recent is not None:
        return {job_id: at for job_id, at in slot.recent.items() if at >= since}
    counted = await counted_exports(resources, user_id, slot.job_id, now=now)
    return {j.job_id: j.created_at for j in counted}


async def _estimate_rows(resources: Resources, user_id: str) -> int | None:
    """The export's size for routing (an index-only count, ~0.1 s per million rows); None
    when routing is off or PostgreSQL cannot answer in time: then it takes the default
    queue, which serves any size, rather than failing the create."""
    if not resources.settings.exports.routes_by_size:
        return None
    try:
        return await estimate_rows(resources.pg, user_id, timeout_s=ESTIMATE_TIMEOUT_S)
    except StoreUnavailable as exc:
        log.warning("export.size_unknown", error=str(exc), hint="routed to the default queue")
        return None


async def _replay(
    resources: Resources, user_id: str, key: str, record: KeyRecord, fingerprint: str
) -> Replayed | None:
    """The answer a key already got: its status code, and its export as it is now."""
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a request with a different body; use a "
            "new key for a new request."
        )
    job = await resources.jobs.get_for_user(record.job_id, user_id)
    if job is None:
        # The export is gone (its retention ended); the key means nothing any more.
        await resources.idempotency.release(user_id, key, job_id=record.job_id)
        return None
    return Replayed(job, record.status)


async def counted_exports(
    resources: Resources, user_id: str, slot_job_id: str | None, *, now: datetime
) -> list[ExportJob]:
    """The user's exports that count against the quota now, oldest first, from the jobs
    themselves (for a slot that does not keep them yet)."""
    limit = resources.settings.exports.max_per_day
    since = now - timedelta(seconds=QUOTA_WINDOW_S)
    counted = await resources.jobs.created_since(
        user_id, since, limit=limit, excluding_error=ENQUEUE_FAILED
    )
    # The index lags the table by a moment; the slot's job (the latest) is read consistently.
    last = None if slot_job_id is None else await resources.jobs.get(slot_job_id)
    if (
        last is not None
        and last.created_at >= since
        and last.error_code != ENQUEUE_FAILED
        and all(j.job_id != last.job_id for j in counted)
    ):
        counted.append(last)
    return counted


def check_quota(recent: Mapping[str, datetime], *, max_per_day: int, now: datetime) -> None:
    """Raise ``QuotaExceeded`` when ``recent`` (the creates counted now) fills the rolling
    24-hour window."""
    if len(recent) < max_per_day:
        return
    oldest = min(recent.values())
    frees_at = oldest + timedelta(seconds=QUOTA_WINDOW_S)
    retry_after = max(1, math.ceil((frees_at - now).total_seconds()))
    raise QuotaExceeded(
        f"You can ask for {max_per_day} exports per 24 hours; the next one is "
        f"possible in {retry_after} seconds.",
        limit=max_per_day,
        retry_after_s=retry_after,
    )


async def _abandon(
    resources: Resources, job: ExportJob, reason: str, *, idempotency_key: str | None
) -> None:
    """The record exists but no message does: close it so it is not left queued forever
    (which also frees the user's slot), and forget the key so a retry starts afresh."""
    if idempotency_key is not None:
        try:
            await resources.idempotency.release(job.user_id, idempotency_key, job_id=job.job_id)
        except StoreError as exc:
            # A retry with this key will replay the 202 of the (failed) export instead.
            log.error("export.key_release_failed", error=str(exc))
    try:
        await mark_enqueue_failed(
            resources.jobs, job.job_id, message="the job could not be queued; please ask again"
        )
    except StoreError as exc:
        # Both stores are failing. The record stays queued; the expiry sweep removes it
        # at the end of its retention.
        log.error("export.abandon_failed", error=str(exc), reason=reason)
    else:
        log.error("export.enqueue_failed", reason=reason)
        observe_export_finished("failed", ENQUEUE_FAILED)
        try:
            await resources.jobs.forget_created(job.user_id, job.job_id)
        except StoreError as exc:
            # It goes on counting against the quota until it leaves the window.
            log.warning("export.quota_release_failed", error=str(exc))
