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

import threading
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


_services: dict[tuple[str, ...], TokenService] = {}
_services_lock = threading.Lock()


def _token_service(settings: Settings) -> TokenService:
    """One TokenService per configured key, per process (parsing the PEM once)."""
    jwt = settings.jwt
    private = jwt.private_key.get_secret_value() if jwt.private_key is not None else ""
    key = (private, jwt.issuer, jwt.audience, jwt.verification_keys or "")
    with _services_lock:
        service = _services.get(key)
        if service is None:
            # Without a configured key (local only) each process makes its own, and links
            # from one process fail in another: `make run` passes one key to both.
            service = build_token_service(jwt, allow_ephemeral=not settings.is_deployed)
            _services[key] = service
        return service


def capability_url(settings: Settings, job: ExportJob, *, now: datetime | None = None) -> str:
    """The link for the export email: ``{api.public_url}/v1/downloads/{token}``.

    Needs ``job.file_key`` and ``job.file_expires_at`` (set before the upload); raises
    ``NotLinkable`` otherwise. Signed with ``jwt.private_key``, which the worker holds.
    """
    return issue_link(_token_service(settings), settings.api.public_url, job, now=now).url
