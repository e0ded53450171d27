"""/v1/exports: create an export, read one, list the caller's, cancel one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
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
from exporter.errors import Conflict, NotFound, ServiceUnavailable, StoreError
from exporter.keys import RESOURCES, SETTINGS
from exporter.metrics import observe_export_created, observe_export_finished
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.queue import QueueUnavailable

log = structlog.stdlib.get_logger("exporter.api.exports")

ERRORS_AUTH = {
    401: {"schema": schemas.Problem, "description": "Missing, invalid or expired token"},
    403: {"schema": schemas.Problem, "description": "The token lacks the needed scope"},
}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def export_path(job_id: str) -> str:
    return f"/v1/exports/{job_id}"


def job_body(job: ExportJob) -> dict[str, Any]:
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message or ""}
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
        "byte_size": job.byte_size,
        "file_name": job.file_name,
        "delivery": job.delivery,
        "error": error,
        "links": {"self": export_path(job.job_id)},
    }


@docs(
    tags=["exports"],
    summary="Ask for an export of all your memberships",
    description=(
        "Records the request and queues it. The CSV arrives by email; poll the returned "
        "job (or its `Location`) for progress."
    ),
    security=BEARER_SECURITY,
    responses={
        **ERRORS_AUTH,
        415: {"schema": schemas.Problem, "description": "Body is not application/json"},
        422: {"schema": schemas.Problem, "description": "Invalid body"},
        503: {"schema": schemas.Problem, "description": "Could not record or queue the job"},
    },
)
@request_schema(schemas.CreateExportRequest)
@response_schema(schemas.ExportResponse, 202, description="Accepted and queued")
async def create_export(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_WRITE)
    resources, settings = request.app[RESOURCES], request.app[SETTINGS]
    body = request["data"] or {}
    job = ExportJob.new(
        user_id=claims.subject,
        fmt=ExportFormat(body.get("format", ExportFormat.CSV.value)),
        now=utcnow(),
        retention_s=settings.exports.retention_days * 86_400,
    )
    try:
        await resources.jobs.create(job)
    except StoreError as exc:
        log.error("export.record_failed", error=str(exc))
        raise ServiceUnavailable(
            "The export could not be recorded; nothing was queued. Please retry.",
            code="store_unavailable",
        ) from None
    structlog.contextvars.bind_contextvars(export_id=job.job_id)
    # The request id rides along so the worker's log lines for this export carry it too.
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    message = ExportMessageV1(
        export_id=job.job_id,
        user_id=job.user_id,
        request_id=request_id if isinstance(request_id, str) else None,
    )
    try:
        await resources.queue.enqueue_export(message)
    except QueueUnavailable as exc:
        await _abandon(request, job, str(exc))
        raise ServiceUnavailable(
            "The export could not be queued. Please retry.", code="queue_unavailable"
        ) from None
    log.info("export.created", format=job.format.value)
    observe_export_created(job.format.value)
    return web.json_response(
        job_body(job), status=202, headers={"Location": export_path(job.job_id)}
    )


async def _abandon(request: web.Request, job: ExportJob, reason: str) -> None:
    """The record exists but no message does: close it so it is not left queued forever."""
    now = utcnow()
    try:
        await request.app[RESOURCES].jobs.transition(
            job.job_id,
            to=JobState.FAILED,
            expected=(JobState.QUEUED,),
            now=now,
            fields={
                "finished_at": now,
                "error_code": "enqueue_failed",
                "error_message": "the job could not be queued; please ask again",
            },
        )
    except StoreError as exc:
        # Both stores are failing. The record stays queued; the expiry sweep removes it
        # at the end of its retention.
        log.error("export.abandon_failed", error=str(exc), reason=reason)
    else:
        log.error("export.enqueue_failed", reason=reason)
        observe_export_finished("failed", "enqueue_failed")


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
