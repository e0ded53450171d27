"""/v1/exports: create an export, read one, list the caller's, cancel one."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from exporter.api import schemas
from exporter.api.guard import BEARER_SECURITY, authenticate
from exporter.api.openapi import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from exporter.auth import Scope
from exporter.cancellation import AlreadyFinished, ExportGone
from exporter.cancellation import cancel_export as cancel_job
from exporter.config import ExportSettings
from exporter.errors import (
    BadRequest,
    ConditionFailed,
    Conflict,
    Gone,
    NotFound,
    ServiceUnavailable,
    StoreError,
    TooManyRequests,
    ValidationFailed,
    WriteConflict,
)
from exporter.keys import RESOURCES, SETTINGS
from exporter.metrics import observe_export_created, observe_export_finished
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.queue import QueueUnavailable
from exporter.store.idempotency import KeyRecord, request_fingerprint
from exporter.store.jobs import CurrentExport

log = structlog.stdlib.get_logger("exporter.api.exports")

# An export the API recorded but could not queue: closed at once, and not counted in the quota.
ENQUEUE_FAILED = "enqueue_failed"

ERRORS_AUTH = {
    401: {"schema": schemas.Problem, "description": "Missing, invalid or expired token"},
    403: {"schema": schemas.Problem, "description": "The token lacks the needed scope"},
}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def export_path(job_id: str) -> str:
    return f"/v1/exports/{job_id}"


def download_path(job_id: str) -> str:
    return f"/v1/exports/{job_id}/download"


def job_body(job: ExportJob) -> dict[str, Any]:
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message or ""}
    links = {"self": export_path(job.job_id)}
    if job.file_key is not None and job.status is JobState.SUCCEEDED:
        links["download"] = download_path(job.job_id)
    return {
        "id": job.job_id,
        "status": job.status.value,
        "format": job.format.value,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "expires_at": _iso(job.expires_at),
        "attempts": job.attempts,
        "row_count": job.row_count,
        # While running: rows written so far (an estimate until row_count is set), the
        # total counted when streaming started, and their ratio.
        "rows_exported": job.rows_exported,
        "total_rows": job.total_rows,
        "progress": job.progress,
        "byte_size": job.byte_size,
        "file_name": job.file_name,
        "delivery": job.delivery,
        "bom": job.bom,
        "download_expires_at": _iso(job.file_expires_at),
        "download_count": job.download_count,
        "last_downloaded_at": _iso(job.last_downloaded_at),
        "error": error,
        "links": links,
    }


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
# A create re-reads and tries again when a concurrent one changed what it read; more rounds
# than this means heavy contention on one user's slot, answered with a retryable 503.
CREATE_ROUNDS = 4
QUOTA_WINDOW_S = 24 * 3600

IDEMPOTENCY_PARAMETER = {
    "in": "header",
    "name": IDEMPOTENCY_HEADER,
    "required": False,
    "description": (
        "Any unique string you choose (a UUID will do), 1 to 255 visible ASCII characters. "
        "Repeating a request with the same key within 24 hours returns the first answer's "
        "status code (202 or 200) and the export it named, as it is now, without creating "
        "anything; the same key with a different body is 422 `idempotency_key_reused`."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY,
        "pattern": f"^[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}$",
    },
}


@docs(
    tags=["exports"],
    summary="Ask for an export of all your memberships",
    description=(
        "Records the request and queues it (202). The CSV arrives by email; poll the "
        "returned job (or its `Location`) for progress. One export per user runs at a time: "
        "while you have a `queued` or `in_progress` one, this answers 200 with that export "
        "instead of starting another. At most `max_per_day` (default 10) exports are "
        "created per rolling 24 hours; beyond that the answer is 429 with `Retry-After`."
    ),
    security=BEARER_SECURITY,
    parameters=[IDEMPOTENCY_PARAMETER],
    responses={
        **ERRORS_AUTH,
        400: {"schema": schemas.Problem, "description": "Invalid Idempotency-Key, or body"},
        415: {"schema": schemas.Problem, "description": "Body is not application/json"},
        422: {
            "schema": schemas.Problem,
            "description": "Invalid body, or an Idempotency-Key reused with another body",
        },
        429: {
            "schema": schemas.Problem,
            "description": "Daily export quota used up; `Retry-After` says when one frees",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
        503: {"schema": schemas.Problem, "description": "Could not record or queue the job"},
    },
)
@request_schema(schemas.CreateExportRequest)
@response_schema(
    schemas.ExportResponse, 200, description="You already have an active export: that one"
)
@response_schema(schemas.ExportResponse, 202, description="Accepted and queued")
async def create_export(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_WRITE)
    key = _idempotency_key(request)
    options = schemas.CreateExportRequest().load(request["data"] or {})
    fingerprint = request_fingerprint(options)
    with _records_unavailable_as_503():
        for _ in range(CREATE_ROUNDS):
            decided = await _decide(request, claims.subject, options, key, fingerprint)
            if decided is not None:
                break
        else:
            raise ServiceUnavailable(
                "Other requests are creating an export for you right now. Please retry.",
                code="create_contended",
            )
    if isinstance(decided, web.Response):
        return decided
    job = decided
    structlog.contextvars.bind_contextvars(export_id=job.job_id)
    # The request id rides along so the worker's log lines for this export carry it too.
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    message = ExportMessageV1(
        export_id=job.job_id,
        user_id=job.user_id,
        request_id=request_id if isinstance(request_id, str) else None,
    )
    try:
        await request.app[RESOURCES].queue.enqueue_export(message)
    except QueueUnavailable as exc:
        await _abandon(request, job, str(exc), idempotency_key=key)
        raise ServiceUnavailable(
            "The export could not be queued. Please retry.", code="queue_unavailable"
        ) from None
    log.info("export.created", format=job.format.value)
    observe_export_created(job.format.value)
    return _job_response(job, 202)


async def _decide(
    request: web.Request,
    user_id: str,
    options: dict[str, Any],
    key: str | None,
    fingerprint: str,
) -> web.Response | ExportJob | None:
    """One round of a create: a response to give (a replay, or the active export), the new
    job (recorded, not yet queued), or None when a concurrent request changed what this one
    read, so the caller reads again."""
    resources, settings = request.app[RESOURCES], request.app[SETTINGS]
    now = utcnow()
    if key is not None:
        record = await resources.idempotency.get(user_id, key, now=now)
        if record is not None:
            return await _replay(request, user_id, key, record, fingerprint)
    current = await resources.jobs.current_for_user(user_id)
    active = current.active
    if active is not None:
        if key is not None:
            try:
                await resources.idempotency.put(
                    user_id, key, job_id=active.job_id, status=200, fingerprint=fingerprint, now=now
                )
            except ConditionFailed:
                return None  # the same key, in a request running beside this one
        log.info("export.already_active", export_id=active.job_id)
        return _job_response(active, 200)
    # Creates of one user are serialised by the slot (create_exclusive is conditional on
    # the slot still naming what current_for_user read), so counting first and creating
    # after cannot let two racing requests both squeeze under the quota.
    _check_quota(await _counted(request, user_id, current, now=now), settings.exports, now=now)
    exports = settings.exports
    job = ExportJob.new(
        user_id=user_id,
        fmt=ExportFormat(options["format"]),
        bom=bool(options.get("bom", False)),
        now=now,
        # The record outlives the file, so a late download gets 410 rather than 404.
        retention_s=(exports.retention_days + exports.record_grace_days) * 86_400,
    )
    also = []
    if key is not None:
        also.append(
            resources.idempotency.put_item(
                user_id, key, job_id=job.job_id, status=202, fingerprint=fingerprint, now=now
            )
        )
    try:
        await resources.jobs.create_exclusive(job, previous=current.slot_job_id, also=also)
    except (ConditionFailed, WriteConflict):
        return None
    return job


async def _replay(
    request: web.Request, user_id: str, key: str, record: KeyRecord, fingerprint: str
) -> web.Response | None:
    """The answer a key already got: its status code, and its export as it is now."""
    resources = request.app[RESOURCES]
    if record.fingerprint != fingerprint:
        raise ValidationFailed(
            f"This {IDEMPOTENCY_HEADER} was used for a request with a different body; use a "
            "new key for a new request.",
            code="idempotency_key_reused",
        )
    job = await resources.jobs.get_for_user(record.job_id, user_id)
    if job is None:
        # The export is gone (its retention ended); the key means nothing any more.
        await resources.idempotency.release(user_id, key, job_id=record.job_id)
        return None
    response = _job_response(job, record.status)
    response.headers["Idempotent-Replayed"] = "true"
    return response


async def _counted(
    request: web.Request, user_id: str, current: CurrentExport, *, now: datetime
) -> list[ExportJob]:
    """The user's exports that count against the quota now, oldest first."""
    limit = request.app[SETTINGS].exports.max_per_day
    since = now - timedelta(seconds=QUOTA_WINDOW_S)
    counted = await request.app[RESOURCES].jobs.created_since(
        user_id, since, limit=limit, excluding_error=ENQUEUE_FAILED
    )
    # The index lags the table by a moment; the slot's job (the latest) is read consistently.
    last = current.job
    if (
        last is not None
        and last.created_at >= since
        and last.error_code != ENQUEUE_FAILED
        and all(j.job_id != last.job_id for j in counted)
    ):
        counted.append(last)
    return counted


def _check_quota(counted: list[ExportJob], settings: ExportSettings, *, now: datetime) -> None:
    if len(counted) < settings.max_per_day:
        return
    oldest = min(j.created_at for j in counted)
    frees_at = oldest + timedelta(seconds=QUOTA_WINDOW_S)
    retry_after = math.ceil((frees_at - now).total_seconds())
    raise TooManyRequests(
        f"You can ask for {settings.max_per_day} exports per 24 hours; the next one is "
        f"possible in {retry_after} seconds.",
        retry_after_s=retry_after,
        code="export_quota_exceeded",
    )


def _idempotency_key(request: web.Request) -> str | None:
    """The validated Idempotency-Key header, or None without one."""
    values = request.headers.getall(IDEMPOTENCY_HEADER, [])
    if not values:
        return None
    key = values[0]
    if (
        len(values) > 1
        or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY
        or not all("!" <= c <= "~" for c in key)
    ):
        raise BadRequest(
            f"{IDEMPOTENCY_HEADER} must be one value of 1 to {MAX_IDEMPOTENCY_KEY} visible "
            "ASCII characters (no spaces).",
            code="invalid_idempotency_key",
        )
    return key


def _job_response(job: ExportJob, status: int) -> web.Response:
    return web.json_response(
        job_body(job), status=status, headers={"Location": export_path(job.job_id)}
    )


async def _abandon(
    request: web.Request, job: ExportJob, reason: str, *, idempotency_key: str | None
) -> None:
    """The record exists but no message does: close it so it is not left queued forever
    (which also frees the user's slot), and forget the key so a retry starts afresh."""
    now = utcnow()
    resources = request.app[RESOURCES]
    if idempotency_key is not None:
        try:
            await resources.idempotency.release(job.user_id, idempotency_key, job_id=job.job_id)
        except StoreError as exc:
            # A retry with this key will replay the 202 of the (failed) export instead.
            log.error("export.key_release_failed", error=str(exc))
    try:
        await resources.jobs.transition(
            job.job_id,
            to=JobState.FAILED,
            expected=(JobState.QUEUED,),
            now=now,
            fields={
                "finished_at": now,
                "error_code": ENQUEUE_FAILED,
                "error_message": "the job could not be queued; please ask again",
            },
        )
    except StoreError as exc:
        # Both stores are failing. The record stays queued; the expiry sweep removes it
        # at the end of its retention.
        log.error("export.abandon_failed", error=str(exc), reason=reason)
    else:
        log.error("export.enqueue_failed", reason=reason)
        observe_export_finished("failed", ENQUEUE_FAILED)


@docs(
    tags=["exports"],
    summary="One of your exports",
    security=BEARER_SECURITY,
    responses={
        **ERRORS_AUTH,
        404: {"schema": schemas.Problem, "description": "No such export of yours"},
        422: {"schema": schemas.Problem, "description": "The id is not a UUID"},
    },
)
@match_info_schema(schemas.ExportPath)
@response_schema(schemas.ExportResponse, 200)
async def get_export(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_READ)
    export_id = str(request["match_info"]["export_id"])
    with _records_unavailable_as_503():
        job = await request.app[RESOURCES].jobs.get_for_user(export_id, claims.subject)
    if job is None:
        raise _not_found()
    return web.json_response(job_body(job))


def _not_found() -> NotFound:
    # The same answer for "missing" and "someone else's": ids are not confirmed to strangers.
    return NotFound("No export with this id.", code="export_not_found")


@docs(
    tags=["exports"],
    summary="Cancel one of your exports",
    description=(
        "Stops a `queued` or `in_progress` export: the job becomes `cancelled` and no email "
        "is sent (unless the mail server had already accepted it when the cancel arrived). "
        "A finished export (`succeeded`, `failed`, `cancelled`, `expired`) answers 409 and "
        "stays as it is. The job itself remains readable until its retention ends."
    ),
    security=BEARER_SECURITY,
    responses={
        **ERRORS_AUTH,
        404: {"schema": schemas.Problem, "description": "No such export of yours"},
        409: {"schema": schemas.Problem, "description": "The export has already finished"},
        422: {"schema": schemas.Problem, "description": "The id is not a UUID"},
        503: {"schema": schemas.Problem, "description": "Export records are unavailable"},
    },
)
@match_info_schema(schemas.ExportPath)
@response_schema(schemas.ExportResponse, 200, description="Cancelled: the job, now `cancelled`")
async def cancel_export(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_WRITE)
    export_id = str(request["match_info"]["export_id"])
    resources = request.app[RESOURCES]
    with _records_unavailable_as_503():
        job = await resources.jobs.get_for_user(export_id, claims.subject)
        if job is None:
            raise _not_found()
        try:
            job = await cancel_job(resources, job)
        except AlreadyFinished as exc:
            raise Conflict(
                f"The export has already finished ({exc.job.status.value}); only queued or "
                "running exports can be cancelled.",
                code="export_finished",
            ) from None
        except ExportGone:
            raise _not_found() from None
    return web.json_response(job_body(job))


@docs(
    tags=["exports"],
    summary="Download a finished export's file",
    description=(
        "For exports too large to attach to the email. Answers with a redirect to a "
        "short-lived signed URL of the file; the URL is made fresh on every call, so ask "
        "this route again rather than keeping it."
    ),
    security=BEARER_SECURITY,
    responses={
        **ERRORS_AUTH,
        302: {"description": "Redirect to the file (a signed URL valid for a minute)"},
        404: {"schema": schemas.Problem, "description": "No such export of yours"},
        409: {
            "schema": schemas.Problem,
            "description": "Not finished yet, or delivered as an email attachment",
        },
        410: {"schema": schemas.Problem, "description": "The file has expired"},
        422: {"schema": schemas.Problem, "description": "The id is not a UUID"},
    },
)
@match_info_schema(schemas.ExportPath)
async def download_export(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_READ)
    export_id = str(request["match_info"]["export_id"])
    resources = request.app[RESOURCES]
    with _records_unavailable_as_503():
        job = await resources.jobs.get_for_user(export_id, claims.subject)
    if job is None:
        raise NotFound("No export with this id.", code="export_not_found")
    now = utcnow()
    expired = job.status is JobState.EXPIRED or (
        job.file_expires_at is not None and job.file_expires_at <= now
    )
    if expired:
        raise Gone(
            "This export's file has expired and was deleted. Ask for a new export.",
            code="export_expired",
        )
    if job.status is not JobState.SUCCEEDED:
        raise Conflict(
            f"This export is {job.status.value}; there is nothing to download.",
            code="export_not_ready",
        )
    if job.file_key is None or job.file_name is None:
        raise Conflict(
            "This export was delivered as an email attachment; it has no download.",
            code="no_download",
        )
    try:
        url = await resources.files.signed_url(
            job.file_key, file_name=job.file_name, content_type="/".join(job.format.content_type)
        )
    except StoreError as exc:
        log.error("export.sign_failed", error=str(exc))
        raise ServiceUnavailable(
            "The file store is unavailable. Please retry.", code="files_unavailable"
        ) from None
    log.info("export.download", export_id=job.job_id)
    # A signed URL is a bearer credential for a minute: keep it out of every cache.
    return web.Response(
        status=302,
        headers={"Location": url, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


@docs(
    tags=["exports"],
    summary="Your exports, newest first",
    security=BEARER_SECURITY,
    responses={
        **ERRORS_AUTH,
        400: {"schema": schemas.Problem, "description": "Invalid cursor"},
        422: {"schema": schemas.Problem, "description": "Invalid query parameters"},
    },
)
@querystring_schema(schemas.ListExportsQuery)
@response_schema(schemas.ExportListResponse, 200)
async def list_exports(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_READ)
    query = request["querystring"]
    limit = query.get("limit") or request.app[SETTINGS].api.page_size_default
    cursor = query.get("cursor")
    with _records_unavailable_as_503():
        page = await request.app[RESOURCES].jobs.list_for_user(
            claims.subject, limit=limit, cursor=cursor
        )
    next_link = None
    if page.next_cursor:
        next_link = "/v1/exports?" + urlencode({"limit": limit, "cursor": page.next_cursor})
    return web.json_response(
        {
            "items": [job_body(j) for j in page.jobs],
            "next_cursor": page.next_cursor,
            "links": {"next": next_link},
        }
    )


@contextmanager
def _records_unavailable_as_503() -> Iterator[None]:
    try:
        yield
    except StoreError as exc:
        log.error("export.read_failed", error=str(exc))
        raise ServiceUnavailable(
            "Export records are unavailable. Please retry.", code="store_unavailable"
        ) from None
