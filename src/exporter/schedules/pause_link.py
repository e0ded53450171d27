"""The one-click link of a scheduled export's email that pauses its schedule.

``{api.public_url}/v1/schedule-pause/{token}``: the token is an ES256 JWT of our own
``TokenService`` with its own type and audience (``schedule_pause``,
``{jwt.audience}/schedule-pause``), naming the schedule and its owner, expiring after
``schedules.pause_link_ttl_days``. A GET shows a confirmation page (mail scanners follow
links, so a GET never pauses); a POST pauses, with no confirmation, as RFC 8058's one-click
``List-Unsubscribe-Post`` requires.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from exporter.auth import TokenService

PAUSE_PREFIX = "/v1/schedule-pause/"


def pause_url(
    tokens: TokenService,
    public_url: str,
    *,
    schedule_id: str,
    user_id: str,
    now: datetime,
    ttl_days: int,
) -> str:
    """A fresh pause link for ``user_id``'s schedule."""
    token = tokens.issue_schedule_pause(
        user_id, schedule_id=schedule_id, expires_at=now + timedelta(days=ttl_days), now=now
    )
    return f"{public_url.rstrip('/')}{PAUSE_PREFIX}{token}"
