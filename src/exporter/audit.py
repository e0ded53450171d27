"""Audit and security events: one logger, ``exporter.audit``, that a log pipeline can route to
long-term, access-controlled storage apart from the operational logs.

Events say who did what to which record, when and with what result. They never carry data
(membership rows, e-mail contents), credentials or tokens: callers pass only the fields below.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from exporter.models import utcnow

log = structlog.stdlib.get_logger("exporter.audit")


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def export_delivered(
    *,
    user_id: str,
    export_id: str,
    rows: int,
    byte_size: int,
    delivery: str,
    requested_at: datetime,
    at: datetime | None = None,
) -> None:
    """One export's personal data left the service: whose, how many rows, how, and when."""
    log.info(
        "audit.export_delivered",
        audit=True,
        actor=user_id,
        user_id=user_id,
        export_id=export_id,
        rows=rows,
        bytes=byte_size,
        delivery=delivery,
        requested_at=_iso(requested_at),
        at=_iso(at or utcnow()),
    )


def security_event(event: str, *, user_id: str | None = None, **fields: str | int | bool) -> None:
    """Something an operator should look at: token reuse, throttling, revocations.

    ``fields`` must be identifiers and counts, never secrets or personal data.
    """
    log.warning(f"security.{event}", audit=True, user_id=user_id, at=_iso(utcnow()), **fields)


def export_downloaded(
    *,
    user_id: str,
    export_id: str,
    link_id: str,
    client: str,
    via: str = "link",
    at: datetime | None = None,
) -> None:
    """A download link was used: whose export, which link (its ``jti``, never the token),
    from which client address, when. Mail scanners count too: every use is one line."""
    log.info(
        "audit.export_downloaded",
        audit=True,
        actor=user_id,
        user_id=user_id,
        export_id=export_id,
        link_id=link_id,
        client=client,
        via=via,
        at=_iso(at or utcnow()),
    )
