"""Download links: ``GET /v1/downloads/{token}`` opens an export's file with no sign-in (the
link in the email), ``POST /v1/exports/{id}/download-link`` gives the signed-in owner one.

The token is verified before anything is read; then the job is read and must still belong to
the token's owner and be downloadable, so a cancel or an expiry revokes every link at once.
Each use is audited and counted on the job. The token never reaches a log line: the request
line logs the route template, and the redaction processor and the access logger mask the
path segment if anything else prints it.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from aiohttp import web
from marshmallow import Schema, fields

from exporter import audit
from exporter.api import schemas
from exporter.api.guard import BEARER_SECURITY, authenticate, requires
from exporter.api.openapi import docs, match_info_schema, response_schema
from exporter.api.pages import error_page as html_error_page
from exporter.api.pages import prefers_html
from exporter.api.problems import export_problems, file_store_problems
from exporter.auth import Scope
from exporter.errors import (
    ApiError,
    Conflict,
    Gone,
    NotFound,
    StoreError,
    TokenError,
    TokenExpired,
)
from exporter.exports.view import iso
from exporter.keys import RESOURCES, SETTINGS, TOKENS
from exporter.links import is_downloadable, issue_link
from exporter.models import ExportJob, JobState, utcnow
from exporter.throttle import client_address

log = structlog.stdlib.get_logger("exporter.api.downloads")

NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
_PROBLEM_OR_PAGE = "A problem (`application/problem+json`), or a page for browsers (`text/html`)"


class DownloadLinkResponse(Schema):
    url = fields.String(
        required=True,
        metadata={"description": "Opens the file with no sign-in until `expires_at`."},
    )
    expires_at = fields.DateTime(required=True)


def check_downloadable(job: ExportJob, *, now: datetime) -> None:
    """Raise the answer for a job whose file cannot be handed out now."""
    expired = job.status is JobState.EXPIRED or (
        job.file_expires_at is not None and job.file_expires_at <= now
    )
    if expired:
        raise Gone(
            "This export's file has expired and was deleted. Ask for a new export.",
            code="export_expired",
        )
    if job.status is JobState.CANCELLED:
        raise Gone("This export was cancelled; its links no longer work.", code="export_cancelled")
    if job.status is JobState.FAILED:
        raise Gone("This export failed; there is no file.", code="export_failed")
    if job.status is JobState.SUCCEEDED and job.file_key is None:
        raise Conflict(
            "This export was delivered as an email attachment; it has no download.",
            code="no_download",
        )
    if not is_downloadable(job):
        raise Conflict(
            f"This export is {job.status.value}; there is nothing to download yet.",
            code="export_not_ready",
        )


@docs(
    tags=["downloads"],
    summary="Open an export's file from a download link (no sign-in)",
    description=(
        "The link in the export email. `token` names one export and its owner and expires "
        "with the file; it is not single-use (mail scanners open links too), and every use "
        "is audited and counted on the export (`download_count`). Answers with a redirect "
        "to a short-lived signed URL of the file. Browsers (`Accept: text/html`) get a page "
        "instead of a problem when the link cannot be used."
    ),
    parameters=[
        {
            "in": "path",
            "name": "token",
            "required": True,
            "schema": {"type": "string"},
            "description": "The link's token, as in the email.",
        }
    ],
    responses={
        302: {"description": "Redirect to the file (a signed URL valid for a minute)"},
        404: {"schema": schemas.Problem, "description": f"Not a valid link. {_PROBLEM_OR_PAGE}"},
        409: {"schema": schemas.Problem, "description": "Not ready yet, or no file"},
        410: {"schema": schemas.Problem, "description": "Expired, cancelled or revoked"},
        503: {"schema": schemas.Problem, "description": "A store is unavailable; retry"},
    },
)
async def open_download(request: web.Request) -> web.StreamResponse:
    try:
        return await _open_download(request)
    except ApiError as exc:
        # The one place where a link's failure becomes a page for a person.
        if prefers_html(request):
            return html_error_page(exc)
        exc.headers.update(NO_STORE)
        raise


async def _open_download(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    now = utcnow()
    try:
        claims = request.app[TOKENS].verify_download(request.match_info["token"], now=now)
    except TokenExpired:
        raise Gone(
            "This download link has expired. Ask for a new export.", code="link_expired"
        ) from None
    except TokenError as exc:
        log.info("download.link_rejected", reason=str(exc))
        raise NotFound("This download link is not valid.", code="link_not_found") from None
    structlog.contextvars.bind_contextvars(user_id=claims.subject, export_id=claims.export_id)
    with export_problems():
        job = await resources.jobs.get(claims.export_id)
    if job is None or job.user_id != claims.subject:
        # Signed by us, yet no such export of that user: retention ended (or a key leaked).
        raise NotFound("This download link is not valid.", code="link_not_found")
    check_downloadable(job, now=now)
    assert job.file_key is not None  # checked by check_downloadable
    with file_store_problems():
        url = await resources.files_for(job).signed_url(
            job.file_key,
            file_name=job.file_name or job.file_key.rsplit("/", 1)[-1],
            content_type="/".join(job.format.content_type),
        )
    address = client_address(
        request, trusted_proxy_hops=request.app[SETTINGS].auth.trusted_proxy_hops
    )
    audit.export_downloaded(
        user_id=job.user_id,
        export_id=job.job_id,
        link_id=claims.token_id,
        client=address,
        at=now,
    )
    try:
        await resources.jobs.record_download(job.job_id, now=now)
    except StoreError as exc:
        # The audit line above is the record of the use; the counter is a convenience.
        log.error("download.count_failed", error=str(exc))
    log.info("download.redirect", link_id=claims.token_id)
    return web.Response(status=302, headers={"Location": url, **NO_STORE})


@requires(Scope.EXPORTS_READ)
@docs(
    tags=["exports"],
    summary="A download link for one of your exports",
    description=(
        "A URL that opens the export's file with no sign-in until the file expires (the "
        "same kind of link the email carries). Made fresh on every call; never stored. "
        "Available once the export's email has gone out, for exports kept for download "
        "(`links.download` in the export)."
    ),
    security=BEARER_SECURITY,
    responses={
        404: {"schema": schemas.Problem, "description": "No such export of yours"},
        409: {"schema": schemas.Problem, "description": "Not ready yet, or no file"},
        410: {"schema": schemas.Problem, "description": "Expired, cancelled or failed"},
        503: {"schema": schemas.Problem, "description": "Export records are unavailable"},
    },
)
@match_info_schema(schemas.ExportPath)
@response_schema(DownloadLinkResponse, 201)
async def create_download_link(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_READ)
    export_id = str(request["match_info"]["export_id"])
    with export_problems():
        job = await request.app[RESOURCES].jobs.get_for_user(export_id, claims.subject)
    if job is None:
        raise NotFound("No export with this id.", code="export_not_found")
    now = utcnow()
    check_downloadable(job, now=now)
    link = issue_link(request.app[TOKENS], request.app[SETTINGS].api.public_url, job, now=now)
    log.info("download.link_issued", export_id=job.job_id)
    return web.json_response(
        {"url": link.url, "expires_at": iso(link.expires_at)}, status=201, headers=NO_STORE
    )
