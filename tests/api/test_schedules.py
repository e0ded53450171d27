"""/v1/export-schedules: create, list, read, change, pause/resume, delete; strict validation
(precise 422s naming the field, nothing of the input echoed), scopes, owner-only, the limit."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeUser
from tests.helpers import login

Client = TestClient[Any, Any]
PATH = "/v1/export-schedules"


async def _problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    return body


async def test_create_read_list_change_and_delete(client: Client, make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    response = await client.post(
        PATH, json={"day_of_month": "last", "time_zone": "America/New_York"}, headers=headers
    )
    assert response.status == 201, await response.text()
    created = await response.json()
    assert response.headers["Location"] == f"{PATH}/{created['id']}"
    assert created["frequency"] == "monthly" and created["format"] == "csv"
    assert created["paused"] is False and created["runs"] == []
    local = datetime.fromisoformat(created["next_run_at"]).astimezone(ZoneInfo("America/New_York"))
    assert (local + timedelta(days=1)).day == 1  # the month's last day
    assert local.hour < 6  # inside the default window, in the user's time

    got = await client.get(f"{PATH}/{created['id']}", headers=headers)
    assert got.status == 200 and await got.json() == created
    listed = await (await client.get(PATH, headers=headers)).json()
    assert [s["id"] for s in listed["items"]] == [created["id"]]

    changed = await client.patch(
        f"{PATH}/{created['id']}",
        json={"day_of_month": 15, "time_zone": "Europe/Berlin", "bom": True},
        headers=headers,
    )
    body = await changed.json()
    assert changed.status == 200, body
    assert body["day_of_month"] == 15 and body["time_zone"] == "Europe/Berlin" and body["bom"]
    moved = datetime.fromisoformat(body["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert moved.day == 15

    paused = await (
        await client.patch(f"{PATH}/{created['id']}", json={"paused": True}, headers=headers)
    ).json()
    assert paused["paused"] is True and paused["paused_reason"] == "user"
    assert paused["next_run_at"] is None
    resumed = await (
        await client.patch(f"{PATH}/{created['id']}", json={"paused": False}, headers=headers)
    ).json()
    assert resumed["paused"] is False and resumed["next_run_at"] is not None

    deleted = await client.delete(f"{PATH}/{created['id']}", headers=headers)
    assert deleted.status == 204
    gone = await client.get(f"{PATH}/{created['id']}", headers=headers)
    assert (await _problem(gone, 404))["code"] == "schedule_not_found"


async def test_at_most_three_schedules_per_user_and_deleting_frees_one(
    client: Client, make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    body = {"day_of_month": 1, "time_zone": "UTC"}
    ids = []
    for _ in range(3):
        response = await client.post(PATH, json=body, headers=headers)
        assert response.status == 201
        ids.append((await response.json())["id"])
    refused = await _problem(await client.post(PATH, json=body, headers=headers), 409)
    assert refused["code"] == "schedule_limit_reached"
    assert "at most 3" in refused["detail"]
    assert (await client.delete(f"{PATH}/{ids[0]}", headers=headers)).status == 204
    assert (await client.post(PATH, json=body, headers=headers)).status == 201


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"day_of_month": 1, "time_zone": "Mars/Olympus_Mons"}, "time_zone", "Unknown time zone"),
        ({"day_of_month": 29, "time_zone": "UTC"}, "day_of_month", "missing from some months"),
        ({"day_of_month": 31, "time_zone": "UTC"}, "day_of_month", "missing from some months"),
        ({"day_of_month": 0, "time_zone": "UTC"}, "day_of_month", "1 to 28"),
        ({"day_of_month": True, "time_zone": "UTC"}, "day_of_month", "1 to 28"),
        ({"day_of_month": "1", "time_zone": "UTC"}, "day_of_month", "1 to 28"),
        ({"day_of_month": "first", "time_zone": "UTC"}, "day_of_month", "1 to 28"),
        ({"time_zone": "UTC"}, "day_of_month", "required"),
        ({"day_of_month": 1}, "time_zone", "required"),
        ({"day_of_month": 1, "time_zone": "UTC", "frequency": "weekly"}, "frequency", "one of"),
        ({"day_of_month": 1, "time_zone": "UTC", "hour": 3}, "hour", "Unknown field"),
        ({"day_of_month": 1, "time_zone": "UTC", "format": "xls"}, "format", "one of"),
    ],
)
async def test_invalid_bodies_get_a_422_naming_the_field(
    client: Client, make_user: MakeUser, body: dict[str, Any], field: str, says: str
) -> None:
    headers = await login(client, await make_user())
    problem = await _problem(await client.post(PATH, json=body, headers=headers), 422)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert says.lower() in problem["errors"][0]["message"].lower()
    assert "Mars" not in str(problem) and "first" not in str(problem)  # nothing echoed


async def test_patch_validates_the_same_way(client: Client, make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    created = await (
        await client.post(PATH, json={"day_of_month": 1, "time_zone": "UTC"}, headers=headers)
    ).json()
    for body, field in (
        ({"day_of_month": 30}, "day_of_month"),
        ({"time_zone": "Nowhere/Land"}, "time_zone"),
        ({"paused": "yes"}, "paused"),
        ({"user_id": "x"}, "user_id"),
    ):
        response = await client.patch(f"{PATH}/{created['id']}", json=body, headers=headers)
        problem = await _problem(response, 422)
        assert [e["field"] for e in problem["errors"]] == [field]


async def test_someone_elses_schedule_is_a_404_for_every_method(
    client: Client, make_user: MakeUser
) -> None:
    owner = await login(client, await make_user())
    stranger = await login(client, await make_user())
    created = await (
        await client.post(PATH, json={"day_of_month": 1, "time_zone": "UTC"}, headers=owner)
    ).json()
    url = f"{PATH}/{created['id']}"
    assert (await _problem(await client.get(url, headers=stranger), 404))["code"] == (
        "schedule_not_found"
    )
    await _problem(await client.patch(url, json={"paused": True}, headers=stranger), 404)
    await _problem(await client.delete(url, headers=stranger), 404)
    assert (await (await client.get(PATH, headers=stranger)).json())["items"] == []
    still = await (await client.get(url, headers=owner)).json()
    assert still["paused"] is False
    missing = f"{PATH}/{uuid.uuid4()}"
    await _problem(await client.get(missing, headers=owner), 404)
    await _problem(await client.get(f"{PATH}/not-a-uuid", headers=owner), 422)


async def test_scopes_reads_need_read_and_writes_need_write(
    client: Client, make_user: MakeUser
) -> None:
    reader = await login(client, await make_user(scopes=["exports:read"]))
    assert (await client.get(PATH, headers=reader)).status == 200
    body = {"day_of_month": 1, "time_zone": "UTC"}
    assert await _problem(await client.post(PATH, json=body, headers=reader), 403)
    await _problem(await client.post(PATH, json=body), 401)
    await _problem(await client.get(PATH), 401)


async def test_schedules_are_in_the_openapi_document(client: Client) -> None:
    spec = await (await client.get("/api/docs/openapi.json")).json()
    assert set(spec["paths"][PATH]) == {"get", "post"}
    assert set(spec["paths"][PATH + "/{schedule_id}"]) == {"get", "patch", "delete"}
    assert "/v1/schedule-pause/{token}" in spec["paths"]
    assert "CreateScheduleRequest" in str(spec["components"]["schemas"])
