"""POST /v1/exports rules on the real stack: one active export per user (200 for the existing
one, also under a race), Idempotency-Key replays, and the per-user daily quota (429)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import create_app
from exporter.auth import TokenService
from exporter.config import Settings
from exporter.keys import RESOURCES
from exporter.models import ExportFormat, ExportJob, JobState, utcnow
from exporter.resources import Resources
from tests.conftest import MakeUser, RunWorker
from tests.helpers import login

Client = TestClient[Any, Any]


async def test_a_second_create_while_one_is_active_returns_it_with_200(
    client: Client, make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    first = await client.post("/v1/exports", json={"format": "csv"}, headers=headers)
    assert first.status == 202
    created = await first.json()

    again = await client.post("/v1/exports", json={"format": "csv.gz"}, headers=headers)

    assert again.status == 200
    assert await again.json() == created  # the same job, the same body shape
    assert again.headers["Location"] == f"/v1/exports/{created['id']}"
    listing = await (await client.get("/v1/exports", headers=headers)).json()
    assert [item["id"] for item in listing["items"]] == [created["id"]]
    resources = client.app[RESOURCES]
    assert await resources.queue.depth() == 1  # nothing else was queued


async def test_a_finished_export_frees_the_slot(
    client: Client, make_user: MakeUser, run_worker: RunWorker
) -> None:
    headers = await login(client, await make_user())
    first = (await (await client.post("/v1/exports", headers=headers)).json())["id"]
    await run_worker()
    assert (await (await client.get(f"/v1/exports/{first}", headers=headers)).json())[
        "status"
    ] == "succeeded"

    second = await client.post("/v1/exports", headers=headers)

    assert second.status == 202
    assert (await second.json())["id"] != first


async def test_other_users_are_not_blocked(client: Client, make_user: MakeUser) -> None:
    alice = await login(client, await make_user())
    bob = await login(client, await make_user())
    assert (await client.post("/v1/exports", headers=alice)).status == 202
    assert (await client.post("/v1/exports", headers=bob)).status == 202


async def test_ten_racing_creates_make_exactly_one_export(
    settings: Settings, tokens: TokenService, make_user: MakeUser
) -> None:
    user = await make_user()
    # Two API instances on one DynamoDB, as behind the load balancer: only the conditional
    # writes can keep them from both creating.
    async with (
        TestClient(TestServer(create_app(settings, tokens=tokens))) as one,
        TestClient(TestServer(create_app(settings, tokens=tokens))) as two,
    ):
        headers = await login(one, user)

        async def post(client: Client) -> tuple[int, str]:
            response = await client.post("/v1/exports", json={}, headers=headers)
            return response.status, (await response.json())["id"]

        results = await asyncio.gather(*(post(one if i % 2 else two) for i in range(10)))

        assert Counter(status for status, _ in results) == {202: 1, 200: 9}
        assert len({export_id for _, export_id in results}) == 1
        listing = await (await one.get("/v1/exports", headers=headers)).json()
        assert len(listing["items"]) == 1
        assert await one.app[RESOURCES].queue.depth() == 1


# --- Idempotency-Key ------------------------------------------------------------------------


async def test_a_retried_request_with_its_key_gets_the_same_answer(
    client: Client, make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    keyed = {**headers, "Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"}
    first = await client.post("/v1/exports", json={"format": "csv"}, headers=keyed)
    assert first.status == 202
    created = await first.json()

    retried = await client.post("/v1/exports", json={"format": "csv"}, headers=keyed)

    assert retried.status == 202  # the original status, not the 200 of "already active"
    assert await retried.json() == created
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers
    assert await client.app[RESOURCES].queue.depth() == 1


async def test_a_replay_shows_the_export_as_it_is_now(client: Client, make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    keyed = {**headers, "Idempotency-Key": "retry-me"}
    export_id = (await (await client.post("/v1/exports", headers=keyed)).json())["id"]
    assert (await client.delete(f"/v1/exports/{export_id}", headers=headers)).status == 200

    replayed = await client.post("/v1/exports", headers=keyed)

    assert replayed.status == 202
    body = await replayed.json()
    assert body["id"] == export_id and body["status"] == "cancelled"
    # Without the key the slot is free again: a new export.
    assert (await client.post("/v1/exports", headers=headers)).status == 202


async def test_a_key_first_answered_200_replays_200_after_that_export_finished(
    client: Client, make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    active = (await (await client.post("/v1/exports", headers=headers)).json())["id"]
    keyed = {**headers, "Idempotency-Key": "second-ask"}
    first = await client.post("/v1/exports", headers=keyed)
    assert first.status == 200 and (await first.json())["id"] == active
    await client.delete(f"/v1/exports/{active}", headers=headers)

    retried = await client.post("/v1/exports", headers=keyed)

    assert retried.status == 200
    assert (await retried.json())["id"] == active  # not a new export


async def test_the_same_key_with_another_body_is_422(client: Client, make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    keyed = {**headers, "Idempotency-Key": "k-1"}
    assert (await client.post("/v1/exports", json={"format": "csv"}, headers=keyed)).status == 202

    reused = await client.post("/v1/exports", json={"format": "csv.gz"}, headers=keyed)

    assert reused.status == 422
    assert reused.content_type == "application/problem+json"
    assert (await reused.json())["code"] == "idempotency_key_reused"


async def test_a_body_equal_after_defaults_is_the_same_request(
    client: Client, make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    keyed = {**headers, "Idempotency-Key": "k-defaults"}
    first = await client.post("/v1/exports", headers=keyed)  # no body: format csv
    again = await client.post("/v1/exports", json={"format": "csv"}, headers=keyed)
    assert (first.status, again.status) == (202, 202)
    assert (await again.json())["id"] == (await first.json())["id"]


async def test_keys_are_per_user(client: Client, make_user: MakeUser) -> None:
    alice = await login(client, await make_user())
    bob = await login(client, await make_user())
    key = {"Idempotency-Key": "shared-key"}
    mine = await client.post("/v1/exports", headers={**alice, **key})
    theirs = await client.post("/v1/exports", headers={**bob, **key})
    assert (mine.status, theirs.status) == (202, 202)
    assert (await mine.json())["id"] != (await theirs.json())["id"]


async def test_racing_requests_with_one_key_create_one_export(
    client: Client, make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    keyed = {**headers, "Idempotency-Key": "double-click"}
    responses = await asyncio.gather(
        *(client.post("/v1/exports", json={}, headers=keyed) for _ in range(6))
    )
    bodies = [await r.json() for r in responses]
    assert len({b["id"] for b in bodies}) == 1
    # The winner answered 202; a loser either replayed that 202 or saw the active export.
    assert Counter(r.status for r in responses)[202] >= 1
    assert all(r.status in (200, 202) for r in responses)


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "has space", "tab\there", "ünïcode", '"quoted value"'],
)
async def test_malformed_keys_are_400_and_create_nothing(
    client: Client, make_user: MakeUser, key: str
) -> None:
    headers = await login(client, await make_user())
    response = await client.post("/v1/exports", headers={**headers, "Idempotency-Key": key})
    assert response.status == 400, await response.text()
    assert response.content_type == "application/problem+json"
    assert (await response.json())["code"] == "invalid_idempotency_key"
    listing = await (await client.get("/v1/exports", headers=headers)).json()
    assert listing["items"] == []


async def test_two_key_headers_are_400(client: Client, make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    response = await client.post(
        "/v1/exports",
        headers=[*headers.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    )
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_idempotency_key"


async def test_a_key_past_24_hours_is_a_new_request(client: Client, make_user: MakeUser) -> None:
    user = await make_user()
    headers = await login(client, user)
    resources: Resources = client.app[RESOURCES]
    # Recorded 25 hours ago (DynamoDB TTL deletes late: the read must check the time).
    old = await _job(resources, user.user_id, JobState.SUCCEEDED, age=timedelta(hours=25))
    await resources.idempotency.put(
        user.user_id,
        "old-key",
        job_id=old.job_id,
        status=202,
        fingerprint="whatever",
        now=utcnow() - timedelta(hours=25),
    )

    response = await client.post("/v1/exports", headers={**headers, "Idempotency-Key": "old-key"})

    assert response.status == 202
    assert (await response.json())["id"] != old.job_id


# --- quota ----------------------------------------------------------------------------------


async def _job(
    resources: Resources, user_id: str, status: JobState, *, age: timedelta
) -> ExportJob:
    """A finished export created ``age`` ago, written straight to the table."""
    job = ExportJob.new(
        user_id=user_id, fmt=ExportFormat.CSV, now=utcnow() - age, retention_s=7 * 86_400
    ).replace(status=status)
    await resources.jobs.create(job)
    return job


async def test_over_the_daily_quota_is_429_with_retry_after(
    settings: Settings, tokens: TokenService, make_user: MakeUser
) -> None:
    limited = settings.model_copy(
        update={"exports": settings.exports.model_copy(update={"max_per_day": 3})}
    )
    user = await make_user()
    async with TestClient(TestServer(create_app(limited, tokens=tokens))) as client:
        resources: Resources = client.app[RESOURCES]
        headers = await login(client, user)
        # Two finished today, the oldest 20 hours ago; one 25 hours ago no longer counts.
        await _job(resources, user.user_id, JobState.SUCCEEDED, age=timedelta(hours=25))
        await _job(resources, user.user_id, JobState.SUCCEEDED, age=timedelta(hours=20))
        latest = await _job(resources, user.user_id, JobState.FAILED, age=timedelta(hours=1))
        # A slot as written before slots kept the user's recent creates: counted from the jobs.
        await resources.dynamo.put_item(
            TableName=settings.dynamo.export_slots_table,
            Item={"user_id": {"S": user.user_id}, "job_id": {"S": latest.job_id}},
        )
        third = await client.post("/v1/exports", headers=headers)
        assert third.status == 202
        third_id = (await third.json())["id"]
        # While it is active a create answers 200 with it, quota or not.
        assert (await client.post("/v1/exports", headers=headers)).status == 200
        await client.delete(f"/v1/exports/{third_id}", headers=headers)

        refused = await client.post("/v1/exports", headers=headers)

        assert refused.status == 429
        assert refused.content_type == "application/problem+json"
        assert (await refused.json())["code"] == "export_quota_exceeded"
        retry_after = int(refused.headers["Retry-After"])
        # The oldest counted one (20 hours old) leaves the window in about 4 hours.
        assert 4 * 3600 - 60 <= retry_after <= 4 * 3600
        listing = await (await client.get("/v1/exports", headers=headers)).json()
        assert len(listing["items"]) == 4  # nothing new


async def test_exports_that_could_not_be_queued_do_not_count(
    settings: Settings, tokens: TokenService, make_user: MakeUser
) -> None:
    limited = settings.model_copy(
        update={"exports": settings.exports.model_copy(update={"max_per_day": 1})}
    )
    user = await make_user()
    async with TestClient(TestServer(create_app(limited, tokens=tokens))) as client:
        resources: Resources = client.app[RESOURCES]
        unqueued = ExportJob.new(
            user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=86_400
        ).replace(status=JobState.FAILED, error_code="enqueue_failed")
        await resources.jobs.create(unqueued)
        headers = await login(client, user)
        assert (await client.post("/v1/exports", headers=headers)).status == 202
