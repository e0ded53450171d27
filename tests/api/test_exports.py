"""/v1/exports over a real HTTP server: contract, ownership, bad input, failing dependencies."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from arq.connections import ArqRedis

from exporter.auth import Scope, TokenService
from exporter.aws import open_dynamo
from exporter.dev.ports import free_port
from exporter.keys import RESOURCES
from exporter.models import JobState, utcnow
from exporter.queue import ExportQueue
from exporter.store.jobs import JobStore
from exporter.store.memberships import EXPORT_HEADER
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import login, sign_in

PROBLEM = "application/problem+json"


async def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"] and body["detail"] and body["type"]
    return body


async def create_and_cancel(client: TestClient[Any, Any], headers: dict[str, str]) -> str:
    """A new export, cancelled at once so that the user may ask for the next one."""
    created = await client.post("/v1/exports", headers=headers)
    assert created.status == 202, await created.text()
    export_id: str = (await created.json())["id"]
    assert (await client.delete(f"/v1/exports/{export_id}", headers=headers)).status == 200
    return export_id


async def test_create_answers_202_with_location_and_a_queued_job(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())

    response = await client.post("/v1/exports", json={"format": "csv"}, headers=headers)

    assert response.status == 202
    body = await response.json()
    assert response.headers["Location"] == f"/v1/exports/{body['id']}"
    assert body["status"] == "queued"
    assert body["format"] == "csv"
    assert body["links"] == {"self": f"/v1/exports/{body['id']}"}
    created = utcnow().fromisoformat(body["created_at"])
    expires = utcnow().fromisoformat(body["expires_at"])
    # The record stays for the file's retention plus the grace in which downloads say 410.
    assert timedelta(days=13) < expires - created <= timedelta(days=14)
    assert body["row_count"] is None and body["error"] is None
    assert body["bom"] is False and body["download_expires_at"] is None


async def test_create_records_the_bom_option(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())

    response = await client.post("/v1/exports", json={"bom": True}, headers=headers)

    assert response.status == 202
    body = await response.json()
    assert body["bom"] is True
    job = await client.app[RESOURCES].jobs.get(body["id"])
    assert job is not None and job.bom is True


@pytest.mark.parametrize("bom", ["yes", 0, 1, None])
async def test_bom_must_be_a_json_boolean(
    client: TestClient[Any, Any], make_user: MakeUser, bom: object
) -> None:
    headers = await login(client, await make_user())

    response = await client.post("/v1/exports", json={"bom": bom}, headers=headers)

    assert response.status == 422
    assert response.content_type == "application/problem+json"


async def test_create_records_the_job_before_it_is_queued(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    headers = await login(client, user)

    body = await (await client.post("/v1/exports", headers=headers)).json()

    resources = client.app[RESOURCES]
    record = await resources.jobs.get(body["id"])
    assert record is not None and record.user_id == user.user_id
    assert record.status is JobState.QUEUED
    queued = await resources.queue.redis.zrange(resources.settings.redis.queue_name, 0, -1)
    assert [q.decode() for q in queued] == [body["id"]]  # arq job id = export id


async def test_create_without_a_body_defaults_to_csv(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    response = await client.post("/v1/exports", headers=headers)
    assert response.status == 202
    assert (await response.json())["format"] == "csv"


async def test_owner_reads_the_job_and_anyone_else_gets_404(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    owner_headers = await login(client, await make_user())
    other_headers = await login(client, await make_user())
    export_id = (await (await client.post("/v1/exports", headers=owner_headers)).json())["id"]

    mine = await client.get(f"/v1/exports/{export_id}", headers=owner_headers)
    theirs = await client.get(f"/v1/exports/{export_id}", headers=other_headers)
    missing = await client.get(f"/v1/exports/{uuid.uuid4()}", headers=owner_headers)

    assert mine.status == 200
    assert (await mine.json())["id"] == export_id
    stranger = await assert_problem(theirs, 404, "export_not_found")
    nobody = await assert_problem(missing, 404, "export_not_found")
    assert stranger == nobody  # the answer does not reveal that the id exists


async def test_a_running_job_shows_its_progress(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    export_id = (await (await client.post("/v1/exports", headers=headers)).json())["id"]
    jobs = client.app[RESOURCES].jobs
    url = f"/v1/exports/{export_id}"

    queued = await (await client.get(url, headers=headers)).json()
    running = await jobs.transition(
        export_id, to=JobState.IN_PROGRESS, now=utcnow(), increment_attempts=True
    )
    await jobs.record_progress(
        export_id, attempt=running.attempts, rows_exported=300, total_rows=1200, now=utcnow()
    )
    halfway = await (await client.get(url, headers=headers)).json()
    (listed,) = (await (await client.get("/v1/exports", headers=headers)).json())["items"]

    assert (queued["rows_exported"], queued["total_rows"], queued["progress"]) == (None,) * 3
    assert halfway["status"] == "in_progress"
    assert (halfway["rows_exported"], halfway["total_rows"]) == (300, 1200)
    assert halfway["progress"] == 0.25
    assert listed == halfway


async def test_non_uuid_id_is_a_validation_error(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    body = await assert_problem(
        await client.get("/v1/exports/not-a-uuid", headers=headers), 422, "validation_failed"
    )
    assert body["errors"][0]["field"] == "export_id"


async def test_list_is_newest_first_paginated_and_only_the_callers(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    other = await login(client, await make_user())
    await client.post("/v1/exports", headers=other)
    # One active export per user: each is cancelled before the next is asked for.
    created = [await create_and_cancel(client, headers) for _ in range(5)]

    seen: list[str] = []
    url: str | None = "/v1/exports?limit=2"
    pages = 0
    while url:
        page = await (await client.get(url, headers=headers)).json()
        seen += [item["id"] for item in page["items"]]
        url = page["links"]["next"]
        pages += 1

    assert seen == list(reversed(created))
    assert pages >= 3


async def test_cursor_from_another_user_or_forged_is_refused(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    alice = await login(client, await make_user())
    bob = await login(client, await make_user())
    for _ in range(2):
        await create_and_cancel(client, alice)
    cursor = (await (await client.get("/v1/exports?limit=1", headers=alice)).json())["next_cursor"]
    assert cursor

    stolen = await client.get("/v1/exports", params={"cursor": cursor}, headers=bob)
    forged = await client.get("/v1/exports", params={"cursor": "bm90LWpzb24"}, headers=alice)

    await assert_problem(stolen, 400, "invalid_cursor")
    await assert_problem(forged, 400, "invalid_cursor")


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"), ("sort=asc", "sort")],
)
async def test_list_query_is_bounded_and_strict(
    client: TestClient[Any, Any], make_user: MakeUser, query: str, field: str
) -> None:
    headers = await login(client, await make_user())
    body = await assert_problem(
        await client.get(f"/v1/exports?{query}", headers=headers), 422, "validation_failed"
    )
    assert [e["field"] for e in body["errors"]] == [field]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b'{"format": "csv"}', "text/plain", 415, "unsupported_media_type"),
        (b"format=csv", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"format": "xls"}', "application/json", 422, "validation_failed"),
        (
            b'{"format": "csv", "email": "x@evil.example"}',
            "application/json",
            422,
            "validation_failed",
        ),
        (b'["csv"]', "application/json", 422, "validation_failed"),
        (b"\xff\xfe", "application/json", 400, "malformed_json"),
    ],
)
async def test_bad_bodies_get_precise_errors_and_create_nothing(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    data: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    headers = await login(client, await make_user())
    response = await client.post(
        "/v1/exports", data=data, headers={**headers, "Content-Type": content_type}
    )
    await assert_problem(response, status, code)
    listing = await (await client.get("/v1/exports", headers=headers)).json()
    assert listing["items"] == []


async def test_oversized_body_is_413(client: TestClient[Any, Any], make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    big = b'{"format": "' + b"x" * 100_000 + b'"}'
    response = await client.post(
        "/v1/exports", data=big, headers={**headers, "Content-Type": "application/json"}
    )
    await assert_problem(response, 413, "payload_too_large")


# Fixed ids: pytest-xdist needs every worker to collect the same test names, and a random
# UUID in the name differs per process.
@pytest.mark.parametrize(
    "route", ["/v1/exports", f"/v1/exports/{uuid.uuid4()}"], ids=["list", "one_export"]
)
async def test_no_token_is_401_with_a_bearer_challenge(
    client: TestClient[Any, Any], route: str
) -> None:
    response = await client.get(route)
    await assert_problem(response, 401, "missing_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not.a.jwt", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer " + "a" * 5000, "Token abc"],
)
async def test_garbage_credentials_are_401(
    client: TestClient[Any, Any], authorization: str
) -> None:
    response = await client.post("/v1/exports", headers={"Authorization": authorization})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_expired_and_forged_tokens_are_401(
    client: TestClient[Any, Any], make_user: MakeUser, tokens: TokenService, settings: Any
) -> None:
    from exporter.auth import SigningKey

    user = await make_user()
    expired = tokens.issue_pair(user.user_id, list(Scope), now=utcnow() - timedelta(hours=1))
    forger = TokenService(settings.jwt, SigningKey.generate())
    forged = forger.issue_pair(user.user_id, list(Scope), now=utcnow())

    for token in (expired.access_token, forged.access_token, expired.refresh_token):
        response = await client.get("/v1/exports", headers={"Authorization": f"Bearer {token}"})
        await assert_problem(response, 401, "invalid_token")


async def test_refresh_token_is_not_an_access_token(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    pair = await sign_in(client, user)
    response = await client.get(
        "/v1/exports", headers={"Authorization": f"Bearer {pair['refresh_token']}"}
    )
    await assert_problem(response, 401, "invalid_token")


async def test_scopes_are_enforced_per_route(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    reader = await login(client, await make_user(scopes=[Scope.EXPORTS_READ]))
    writer = await login(client, await make_user(scopes=[Scope.EXPORTS_WRITE]))

    await assert_problem(
        await client.post("/v1/exports", headers=reader), 403, "insufficient_scope"
    )
    assert (await client.get("/v1/exports", headers=reader)).status == 200
    assert (await client.post("/v1/exports", headers=writer)).status == 202
    await assert_problem(await client.get("/v1/exports", headers=writer), 403, "insufficient_scope")


async def test_unknown_route_and_method_are_problems(client: TestClient[Any, Any]) -> None:
    await assert_problem(await client.get("/v1/nope"), 404, "not_found")
    response = await client.delete("/v1/auth/token")
    await assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


async def test_queue_down_answers_503_and_closes_the_record(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    resources = client.app[RESOURCES]
    # A real Redis client aimed at a port where nothing listens: enqueue really fails.
    dead = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    broken = dataclasses.replace(
        resources, queue=ExportQueue(dead, queue_name=resources.settings.redis.queue_name)
    )
    client.app._state[RESOURCES] = broken
    try:
        response = await client.post("/v1/exports", headers=headers)
    finally:
        client.app._state[RESOURCES] = resources
        await dead.aclose()

    await assert_problem(response, 503, "queue_unavailable")
    assert response.headers["Retry-After"]
    (job,) = (await (await client.get("/v1/exports", headers=headers)).json())["items"]
    assert job["status"] == "failed"
    assert job["error"]["code"] == "enqueue_failed"


async def test_job_store_down_answers_503_and_queues_nothing(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    resources = client.app[RESOURCES]
    dead_settings = resources.settings.dynamo.model_copy(
        update={
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "max_attempts": 1,
            "connect_timeout_s": 1,
        }
    )
    async with open_dynamo(dead_settings) as dead_client:
        broken = dataclasses.replace(resources, jobs=JobStore(dead_client, dead_settings))
        client.app._state[RESOURCES] = broken
        try:
            response = await client.post("/v1/exports", headers=headers)
        finally:
            client.app._state[RESOURCES] = resources

    await assert_problem(response, 503, "store_unavailable")
    assert await resources.queue.depth() == 0


async def test_responses_carry_request_id_and_safety_headers(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    response = await client.get("/v1/exports", headers={**headers, "X-Request-ID": "trace-me-123"})
    assert response.headers["X-Request-ID"] == "trace-me-123"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


async def test_a_finished_export_carries_a_manifest_that_matches_its_stored_file(
    client: TestClient[Any, Any], make_user: MakeUser, seed_rows: SeedRows, run_worker: RunWorker
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 12)
    headers = await login(client, user)
    created = await client.post("/v1/exports", headers=headers, json={"format": "csv.gz"})
    export_id = (await created.json())["id"]
    assert (await created.json())["manifest"] is None  # nothing produced yet

    await run_worker()

    body = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    manifest = body["manifest"]
    assert manifest["row_count"] == 12 and manifest["format"] == "csv.gz"
    assert manifest["columns"] == list(EXPORT_HEADER)
    assert manifest["time_zone"] == "UTC"
    assert manifest["file_name"] == body["file_name"]
    # The checksum is of the file as stored (what every download serves).
    resources = client.app[RESOURCES]
    job = await resources.jobs.get(export_id)
    assert job is not None and job.file_key is not None
    stored = await resources.files._client.get_object(
        Bucket=resources.files.bucket, Key=job.file_key
    )
    async with stored["Body"] as stream:
        data = await stream.read()
    assert manifest["byte_size"] == len(data)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["links"]["download"] == f"/v1/exports/{export_id}/download"
    assert body["delivery_error"] is None
