"""Capability download links: a URL that opens one export's file, with no sign-in.

The token in the path is an ES256 JWT from our own ``TokenService`` with its own type and
audience (``download``, ``{jwt.audience}/download``), so it is never accepted as an access
token, nor an access token as a link. It names the export and its owner and expires with the
file (``file_expires_at``). It is not stored anywhere: the route verifies the signature, then
reads the job and checks it still matches, so cancelling or expiring the export revokes
every link at once.

The API (``POST /v1/exports/{id}/download-link``) and the worker (the email) both build links
here; neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from exporter.auth import TokenService, build_token_service
from exporter.config import Settings
from exporter.models import ExportJob, JobState, utcnow

DOWNLOADS_PREFIX = "/v1/downloads/"


@dataclass(frozen=True, slots=True)
class IssuedLink:
    url: str
    expires_at: datetime


class NotLinkable(ValueError):
    """The export has no file to link to (attached to the email, or not uploaded yet)."""


def page_url(public_url: str) -> str:
    """The self-service page (sign in, ask, watch, download): the API's root."""
    return f"{public_url.rstrip('/')}/"


def capability_path(token: str) -> str:
    return f"{DOWNLOADS_PREFIX}{token}"


def is_downloadable(job: ExportJob) -> bool:
    """The file may be handed out: it exists and the export succeeded, or its email has gone
    out (the email lands a moment before the record says ``succeeded``)."""
    return job.file_key is not None and (
        job.status is JobState.SUCCEEDED
        or (job.status is JobState.IN_PROGRESS and job.email_sent_at is not None)
    )


def issue_link(
    tokens: TokenService, public_url: str, job: ExportJob, *, now: datetime | None = None
) -> IssuedLink:
    """A fresh link to ``job``'s file, valid until the file expires."""
    if job.file_key is None or job.file_expires_at is None:
        raise NotLinkable(f"export {job.job_id} has no stored file")
    token = tokens.issue_download(
        job.user_id, export_id=job.job_id, expires_at=job.file_expires_at, now=now or utcnow()
    )
    return IssuedLink(
        url=f"{public_url.rstrip('/')}{capability_path(token)}", expires_at=job.file_expires_at
    )


def capability_url(settings: Settings, job: ExportJob, *, now: datetime | None = None) -> str:
    """A link to ``job``'s file, ``{api.public_url}/v1/downloads/{token}``, signed with the
    configured ``jwt.private_key`` (a one-off: it parses the key each call; a process that
    makes many, like the worker, holds one ``TokenService`` in ``Resources.tokens``).

    Needs ``job.file_key`` and ``job.file_expires_at``; raises ``NotLinkable`` otherwise.
    """
    tokens = build_token_service(settings.jwt, allow_ephemeral=False)
    return issue_link(tokens, settings.api.public_url, job, now=now).url
