"""/v1/export-schedules: monthly exports that run by themselves (create, list, read, change,
delete). Writes need ``exports:write``, reads ``exports:read``; someone else's schedule is a
404, the same as a missing one."""

from __future__ import annotations

from aiohttp import web

from exporter.api import schemas
from exporter.api.guard import BEARER_SECURITY, authenticate, requires
from exporter.api.openapi import docs, match_info_schema, request_schema, response_schema
from exporter.api.problems import schedule_problems
from exporter.auth import Scope
from exporter.keys import RESOURCES
from exporter.models import ExportFormat
from exporter.schedules import manage
from exporter.schedules.view import schedule_body, schedule_path

_NOT_FOUND = {"schema": schemas.Problem, "description": "No such schedule of yours"}
_UNAVAILABLE = {"schema": schemas.Problem, "description": "Schedules are unavailable; retry"}


@requires(Scope.EXPORTS_WRITE)
@docs(
    tags=["schedules"],
    summary="Have an export of your memberships made every month",
    description=(
        'Creates a monthly schedule: on `day_of_month` (1 to 28, or `"last"`) in '
        "`time_zone`, an export is made as if you had asked for it, and emailed to you. "
        "Each schedule starts at its own stable time in the early hours of that day (the "
        "load is spread), shown as `next_run_at`. If you have an export running then, the "
        "run is tried again later the same day. The email says when the next one comes and "
        "has a one-click link that pauses the schedule. At most 3 schedules per user (409)."
    ),
    security=BEARER_SECURITY,
    responses={
        409: {"schema": schemas.Problem, "description": "You have as many schedules as allowed"},
        422: {
            "schema": schemas.Problem,
            "description": "Invalid body: unknown time zone, day 29-31, unknown field",
        },
        503: _UNAVAILABLE,
    },
)
@request_schema(schemas.CreateScheduleRequest)
@response_schema(schemas.ScheduleResponse, 201, description="Created")
async def create_schedule(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_WRITE)
    body = schemas.CreateScheduleRequest().load(request["data"] or {})
    wanted = manage.ScheduleRequest(
        day_of_month=body["day_of_month"],
        time_zone=body["time_zone"],
        fmt=ExportFormat(body["format"]),
        bom=bool(body["bom"]),
    )
    with schedule_problems():
        schedule = await manage.create_schedule(request.app[RESOURCES], claims.subject, wanted)
    return web.json_response(
        schedule_body(schedule),
        status=201,
        headers={"Location": schedule_path(schedule.schedule_id)},
    )


@requires(Scope.EXPORTS_READ)
@docs(
    tags=["schedules"],
    summary="Your export schedules",
    security=BEARER_SECURITY,
    responses={503: _UNAVAILABLE},
)
@response_schema(schemas.ScheduleListResponse, 200)
async def list_schedules(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_READ)
    with schedule_problems():
        items = await manage.list_schedules(request.app[RESOURCES], claims.subject)
    return web.json_response({"items": [schedule_body(s) for s in items]})


@requires(Scope.EXPORTS_READ)
@docs(
    tags=["schedules"],
    summary="One of your export schedules, with its last runs",
    security=BEARER_SECURITY,
    responses={404: _NOT_FOUND, 422: {"schema": schemas.Problem, "description": "Not a UUID"}},
)
@match_info_schema(schemas.SchedulePath)
@response_schema(schemas.ScheduleResponse, 200)
async def get_schedule(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_READ)
    schedule_id = str(request["match_info"]["schedule_id"])
    with schedule_problems():
        schedule = await manage.get_schedule(request.app[RESOURCES], claims.subject, schedule_id)
    return web.json_response(schedule_body(schedule))


@requires(Scope.EXPORTS_WRITE)
@docs(
    tags=["schedules"],
    summary="Change, pause or resume one of your export schedules",
    description=(
        "Send only what changes. A new `day_of_month` or `time_zone` moves `next_run_at`; "
        "`paused: true` stops the runs, `paused: false` resumes from the next chosen day."
    ),
    security=BEARER_SECURITY,
    responses={404: _NOT_FOUND, 503: _UNAVAILABLE},
)
@match_info_schema(schemas.SchedulePath)
@request_schema(schemas.UpdateScheduleRequest)
@response_schema(schemas.ScheduleResponse, 200)
async def update_schedule(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_WRITE)
    schedule_id = str(request["match_info"]["schedule_id"])
    body = schemas.UpdateScheduleRequest().load(request["data"] or {})
    with schedule_problems():
        schedule = await manage.change_schedule(
            request.app[RESOURCES],
            claims.subject,
            schedule_id,
            day_of_month=body.get("day_of_month"),
            time_zone=body.get("time_zone"),
            fmt=ExportFormat(body["format"]) if "format" in body else None,
            bom=body.get("bom"),
            paused=body.get("paused"),
        )
    return web.json_response(schedule_body(schedule))


@requires(Scope.EXPORTS_WRITE)
@docs(
    tags=["schedules"],
    summary="Delete one of your export schedules",
    description="No more runs; exports it already made stay as they are.",
    security=BEARER_SECURITY,
    responses={
        204: {"description": "Deleted"},
        404: _NOT_FOUND,
        422: {"schema": schemas.Problem, "description": "Not a UUID"},
        503: _UNAVAILABLE,
    },
)
@match_info_schema(schemas.SchedulePath)
async def delete_schedule(request: web.Request) -> web.Response:
    claims = authenticate(request, Scope.EXPORTS_WRITE)
    schedule_id = str(request["match_info"]["schedule_id"])
    with schedule_problems():
        await manage.delete_schedule(request.app[RESOURCES], claims.subject, schedule_id)
    return web.Response(status=204)
