"""/v1/exports: create an export, read one, list the caller's, cancel one."""

from __future__ import annotations

from urllib.parse import urlencode

import structlog
from aiohttp import web

from exporter.api import schemas
from exporter.api.guard import BEARER_SECURITY, authenticate, requires
from exporter.api.openapi import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from exporter.api.problems import export_not_found, export_problems, file_store_problems
from exporter.auth import Scope
from exporter.errors import (
    BadRequest,
    Conflict,
    Gone,
)
from exporter.exports import create
from exporter.exports.cancel import cancel_export as cancel_job
from exporter.exports.create import Created, ExportRequest, Replayed
from exporter.exports.view import export_path, job_body, queue_place
from exporter.keys import RESOURCES, SETTINGS
from exporter.models import ExportFormat, ExportJob, JobState, utcnow

log = structlog.stdlib.get_logger("exporter.api.exports")

ERRORS_AUTH = {
    401: {"schema": schemas.Problem, "description": "Missing, invalid or expired token"},
    403: {"schema": schemas.Problem, "description": "The token lacks the needed scope"},
}


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255

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


@requires(Scope.EXPORTS_WRITE)
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
    # The validation middleware has loaded the body (defaults filled in); without a body,
    # the defaults. Not loaded twice: a second load would re-parse its dates.
    options = request["data"] or schemas.CreateExportRequest().load({})
    wanted = ExportRequest(
        fmt=ExportFormat(options["format"]),
        bom=bool(options["bom"]),
        selection=schemas.CreateExportRequest.selection(options),
    )
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    with export_problems():
        result = await create.create_export(
            request.app[RESOURCES],
            claims.subject,
            wanted,
            idempotency_key=key,
            request_id=request_id if isinstance(request_id, str) else None,
        )
    if isinstance(result, Created):
        return _job_response(result.job, 202)
    if isinstance(result, Replayed):
        response = _job_response(result.job, result.status)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    return _job_response(result.job, 200)


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


@requires(Scope.EXPORTS_READ)
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
    resources = request.app[RESOURCES]
    with export_problems():
        job = await resources.jobs.get_for_user(export_id, claims.subject)
    if job is None:
        raise export_not_found()
    return web.json_response(job_body(job, await queue_place(resources, job)))


@requires(Scope.EXPORTS_WRITE)
@docs(
    tags=["exports"],
    summary="Cancel one of your exports",
    description=(
        "Stops a `queued` or `in_progress` export: the job becomes `cancelled` and no email "
        "is sent (unless the mail server had already accepted it when the cancel arrived, "
        "or, should the cancel not reach the worker, it was within one progress interval, "
        "2 s, of sending it; the file is then deleted, so its link answers 410). "
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
    with export_problems():
        job = await resources.jobs.get_for_user(export_id, claims.subject)
        if job is None:
            raise export_not_found()
        job = await cancel_job(resources, job)
    return web.json_response(job_body(job))


@requires(Scope.EXPORTS_READ)
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
    with export_problems():
        job = await resources.jobs.get_for_user(export_id, claims.subject)
    if job is None:
        raise export_not_found()
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
    with file_store_problems():
        url = await resources.files_for(job).signed_url(
            job.file_key, file_name=job.file_name, content_type="/".join(job.format.content_type)
        )
    log.info("export.download", export_id=job.job_id)
    # A signed URL is a bearer credential for a minute: keep it out of every cache.
    return web.Response(
        status=302,
        headers={"Location": url, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


@requires(Scope.EXPORTS_READ)
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
    with export_problems():
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
