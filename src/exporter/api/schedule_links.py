"""The pause link of a scheduled export's email: ``GET`` shows a page with a button (link
scanners and previews fetch links, and must not pause anything), ``POST`` pauses at once
(RFC 8058 one-click: mail providers POST ``List-Unsubscribe=One-Click`` with no cookies and no
confirmation). Bad or tampered link 404, expired 410, a schedule that is gone or not the
link's owner's 404. The token never reaches a log line (``redact.py`` masks the segment).
"""

from __future__ import annotations

import html

import structlog
from aiohttp import web

from exporter.api import schemas
from exporter.api.hardening import read_body
from exporter.api.openapi import docs
from exporter.api.pages import ASSETS_PREFIX, HOME_PATH, prefers_html
from exporter.api.problems import schedule_problems
from exporter.auth import SchedulePauseClaims
from exporter.errors import ApiError, Gone, NotFound, TokenError, TokenExpired
from exporter.keys import RESOURCES, SETTINGS, TOKENS
from exporter.models import utcnow
from exporter.schedules import manage
from exporter.schedules.model import PauseReason, Schedule
from exporter.schedules.pause_link import PAUSE_PREFIX

log = structlog.stdlib.get_logger("exporter.api.schedule_links")

__all__ = ["PAUSE_PREFIX", "PAUSE_ROUTE", "confirm_pause", "pause_by_link"]

# The route whose POST body is a form (RFC 8058), not JSON: the JSON body check skips it.
PAUSE_ROUTE = "pause_schedule_by_link"
# A page with one form that posts back to this origin; its stylesheet, nothing else.
PAUSE_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": PAUSE_PAGE_CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
_TOKEN_PARAMETER = {
    "in": "path",
    "name": "token",
    "required": True,
    "schema": {"type": "string"},
    "description": "The link's token, as in the email.",
}
_RESPONSES = {
    404: {"schema": schemas.Problem, "description": "Not a valid link (or a page for browsers)"},
    410: {"schema": schemas.Problem, "description": "The link has expired"},
    503: {"schema": schemas.Problem, "description": "Schedules are unavailable; retry"},
}


def _page(
    title: str, paragraphs: list[str], *, form: bool = False, status: int = 200
) -> web.Response:
    e = html.escape
    button = (
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit" class="button">Pause my monthly export</button></form>'
        if form
        else f'<p><a class="button" href="{HOME_PATH}">Go to your exports</a></p>'
    )
    body = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{e(title)} · Exporter</title>\n"
        f'<link rel="stylesheet" href="{ASSETS_PREFIX}app.css">\n</head>\n<body>\n'
        f'<main class="page message">\n<h1>{e(title)}</h1>\n'
        + "".join(f"<p>{e(p)}</p>\n" for p in paragraphs)
        + button
        + "\n</main>\n</body>\n</html>\n"
    )
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS
    )


def _verify(request: web.Request) -> SchedulePauseClaims:
    try:
        return request.app[TOKENS].verify_schedule_pause(request.match_info["token"], now=utcnow())
    except TokenExpired:
        raise Gone(
            "This link has expired. Sign in to pause or delete the schedule.",
            code="pause_link_expired",
        ) from None
    except TokenError as exc:
        log.info("schedule_pause.link_rejected", reason=str(exc))
        raise NotFound("This link is not valid.", code="pause_link_not_found") from None


async def _owned(request: web.Request, claims: SchedulePauseClaims) -> Schedule:
    structlog.contextvars.bind_contextvars(user_id=claims.subject, schedule_id=claims.schedule_id)
    with schedule_problems():
        schedule = await request.app[RESOURCES].schedules.get(claims.schedule_id)
    if schedule is None or schedule.user_id != claims.subject:
        raise NotFound("This link is not valid.", code="pause_link_not_found")
    return schedule


def _as_page(request: web.Request, exc: ApiError) -> web.StreamResponse:
    if not prefers_html(request):
        raise exc
    return _page(
        "This link does not work" if exc.status == 404 else exc.title,
        [exc.detail, "You can pause or delete your schedules on your exports page."],
        status=exc.status,
    )


@docs(
    tags=["schedules"],
    summary="The pause link of a scheduled export's email: a confirmation page",
    description=(
        "Shows a page with one button that pauses the schedule (a GET never pauses: mail "
        "scanners open links). Mail clients' one-click unsubscribe POSTs instead."
    ),
    parameters=[_TOKEN_PARAMETER],
    responses={200: {"description": "The confirmation page (text/html)"}, **_RESPONSES},
)
async def confirm_pause(request: web.Request) -> web.StreamResponse:
    try:
        schedule = await _owned(request, _verify(request))
    except ApiError as exc:
        return _as_page(request, exc)
    if schedule.paused:
        return _page(
            "Your monthly export is paused",
            ["No more exports will be made by this schedule until you resume it."],
        )
    return _page(
        "Pause your monthly export?",
        [
            f"Your memberships are exported on day {schedule.day_of_month} of each month "
            f"({schedule.time_zone}) and emailed to you."
            if schedule.day_of_month != "last"
            else f"Your memberships are exported on the last day of each month "
            f"({schedule.time_zone}) and emailed to you.",
            "Pausing stops these emails. You can resume or delete the schedule on your "
            "exports page.",
        ],
        form=True,
    )


@docs(
    tags=["schedules"],
    summary="Pause a schedule from its email's link (RFC 8058 one-click)",
    description=(
        "Pauses the schedule the link names, with no sign-in and no confirmation: what mail "
        "clients send for `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and what the "
        "confirmation page's button sends. The body (form-encoded) is not needed."
    ),
    parameters=[_TOKEN_PARAMETER],
    responses={200: {"description": "Paused (a page, text/html)"}, **_RESPONSES},
)
async def pause_by_link(request: web.Request) -> web.StreamResponse:
    # Read (and drop) the form body within the body deadline; its size is bounded by
    # client_max_size. Its content does not matter: the token is the authority.
    if request.can_read_body:
        await read_body(request, timeout_s=request.app[SETTINGS].api.body_timeout_s)
    try:
        claims = _verify(request)
        await _owned(request, claims)
        with schedule_problems():
            await manage.pause_schedule(
                request.app[RESOURCES],
                claims.schedule_id,
                reason=PauseReason.UNSUBSCRIBED,
                user_id=claims.subject,
            )
    except ApiError as exc:
        return _as_page(request, exc)
    log.info("schedule_pause.paused_by_link", link_id=claims.token_id)
    return _page(
        "Your monthly export is paused",
        [
            "No more exports will be made by this schedule. You can resume or delete it on "
            "your exports page."
        ],
    )
