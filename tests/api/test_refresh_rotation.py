"""Refresh tokens over HTTP and in DynamoDB: single use, reuse revokes the family, logout,
disabled and deleted users, hashes only, and TTL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from exporter.config import Settings
from exporter.keys import RESOURCES, SETTINGS, TOKENS
from exporter.models import utcnow
from exporter.store.refresh_tokens import token_hash
from tests.conftest import MakeUser
from tests.helpers import sign_in

Pair = dict[str, Any]


async def refresh(client: TestClient[Any, Any], token: str) -> tuple[int, Pair]:
    response = await client.post("/v1/auth/refresh", json={"refresh_token": token})
    body: Pair = await response.json()
    if response.status == 401:
        assert body["code"] == "invalid_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return response.status, body


async def scan_table(client: TestClient[Any, Any], settings: Settings) -> list[dict[str, Any]]:
    dynamo = client.app[RESOURCES].dynamo
    response = await dynamo.scan(TableName=settings.dynamo.refresh_tokens_table)
    items: list[dict[str, Any]] = response["Items"]
    return items


async def test_each_refresh_token_works_once_and_its_successor_works(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    first = await sign_in(client, await make_user())
    status, second = await refresh(client, first["refresh_token"])
    assert status == 200
    status, third = await refresh(client, second["refresh_token"])
    assert status == 200
    assert len({first["refresh_token"], second["refresh_token"], third["refresh_token"]}) == 3


async def test_reuse_revokes_the_whole_family_and_is_a_security_event(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    stolen = await sign_in(client, user)
    other_session = await sign_in(client, user)  # a second sign-in is another family
    # The victim refreshes; the attacker later replays the old token.
    status, victim = await refresh(client, stolen["refresh_token"])
    assert status == 200
    with structlog.testing.capture_logs() as logs:
        status, _ = await refresh(client, stolen["refresh_token"])
    assert status == 401
    # Both the attacker and the victim are out of that family...
    status, _ = await refresh(client, victim["refresh_token"])
    assert status == 401
    (event,) = [e for e in logs if e["event"] == "security.refresh_token_reused"]
    assert event["log_level"] == "warning" and event["audit"] is True
    assert event["user_id"] == user.user_id and event["family_id"]
    # ...but the other sign-in is untouched.
    status, _ = await refresh(client, other_session["refresh_token"])
    assert status == 200


async def test_concurrent_use_of_one_token_lets_at_most_one_through(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    pair = await sign_in(client, await make_user())
    results = await asyncio.gather(*(refresh(client, pair["refresh_token"]) for _ in range(4)))
    winners = [body for status, body in results if status == 200]
    assert len(winners) <= 1
    assert sorted(status for status, _ in results).count(401) >= 3
    for body in winners:  # a race is reuse too: the winner's family is revoked
        status, _ = await refresh(client, body["refresh_token"])
        assert status == 401


async def test_logout_revokes_the_family_and_answers_204_for_anything(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    first = await sign_in(client, await make_user())
    status, second = await refresh(client, first["refresh_token"])
    assert status == 200
    response = await client.post("/v1/auth/logout", json={"refresh_token": first["refresh_token"]})
    assert response.status == 204
    assert response.headers["Cache-Control"] == "no-store"
    status, _ = await refresh(client, second["refresh_token"])
    assert status == 401
    for token in ("garbage", first["access_token"], first["refresh_token"]):
        response = await client.post("/v1/auth/logout", json={"refresh_token": token})
        assert response.status == 204


@pytest.mark.parametrize("how", ["disabled", "deleted"])
async def test_refresh_fails_at_once_for_disabled_or_deleted_users(
    client: TestClient[Any, Any], make_user: MakeUser, settings: Settings, how: str
) -> None:
    user = await make_user()
    pair = await sign_in(client, user)
    resources = client.app[RESOURCES]
    if how == "disabled":
        await resources.users.set_active(user.user_id, active=False)
    else:
        await resources.dynamo.delete_item(
            TableName=settings.dynamo.users_table, Key={"user_id": {"S": user.user_id}}
        )
    status, _ = await refresh(client, pair["refresh_token"])
    assert status == 401
    # Disabled users cannot sign in either, with the same answer as a wrong password.
    response = await client.post(
        "/v1/auth/token", json={"email": user.email, "password": user.password}
    )
    assert response.status == 401
    assert (await response.json())["code"] == "invalid_credentials"
    if how == "disabled":  # re-enabling does not resurrect the revoked family
        await resources.users.set_active(user.user_id, active=True)
        status, _ = await refresh(client, pair["refresh_token"])
        assert status == 401


async def test_tokens_are_stored_only_as_hashes_with_a_ttl(
    client: TestClient[Any, Any], make_user: MakeUser, settings: Settings
) -> None:
    pair = await sign_in(client, await make_user())
    items = await scan_table(client, settings)
    dump = repr(items)
    assert pair["refresh_token"] not in dump
    assert pair["refresh_token"].split(".")[2] not in dump  # not even the signature
    mine = [i for i in items if i["pk"]["S"] == f"token#{token_hash(pair['refresh_token'])}"]
    assert len(mine) == 1
    assert int(mine[0]["expires_at"]["N"]) > 0
    dynamo = client.app[RESOURCES].dynamo
    ttl = await dynamo.describe_time_to_live(TableName=settings.dynamo.refresh_tokens_table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"


async def test_a_valid_token_without_a_record_is_refused(
    client: TestClient[Any, Any], make_user: MakeUser, settings: Settings
) -> None:
    """A refresh token signed by us but never recorded (or whose record expired) is dead."""
    user = await make_user()
    pair = client.app[TOKENS].issue_pair(user.user_id, ["exports:read"], now=utcnow())
    status, _ = await refresh(client, pair.refresh_token)
    assert status == 401


async def _plant_token(
    client: TestClient[Any, Any], settings: Settings, user_id: str, family_id: str, issued_at: int
) -> str:
    """A refresh token of ``family_id`` that is not the family's head, as a cross-region
    race leaves one (store/refresh_tokens.py): written straight into the table."""
    pair = client.app[TOKENS].issue_pair(user_id, ["exports:read"], now=utcnow())
    await client.app[RESOURCES].dynamo.put_item(
        TableName=settings.dynamo.refresh_tokens_table,
        Item={
            "pk": {"S": f"token#{token_hash(pair.refresh_token)}"},
            "family_id": {"S": family_id},
            "user_id": {"S": user_id},
            "expires_at": {"N": str(pair.refresh_expires_at)},
            "issued_at": {"N": str(issued_at)},
        },
    )
    return str(pair.refresh_token)


async def _family_of(client: TestClient[Any, Any], token: str) -> tuple[str, int]:
    record = await client.app[RESOURCES].dynamo.get_item(
        TableName=client.app[SETTINGS].dynamo.refresh_tokens_table,
        Key={"pk": {"S": f"token#{token_hash(token)}"}},
        ConsistentRead=True,
    )
    family_id = record["Item"]["family_id"]["S"]
    family = await client.app[RESOURCES].dynamo.get_item(
        TableName=client.app[SETTINGS].dynamo.refresh_tokens_table,
        Key={"pk": {"S": f"family#{family_id}"}},
        ConsistentRead=True,
    )
    return family_id, int(family["Item"]["head_at"]["N"])


async def test_a_fork_from_another_region_is_reuse_and_revokes_the_family(
    client: TestClient[Any, Any], settings: Settings, make_user: MakeUser
) -> None:
    user = await make_user()
    pair = await sign_in(client, user)
    family_id, head_at = await _family_of(client, pair["refresh_token"])
    # The other region's successor of the same token lost last writer wins: unused, older
    # than the head, not the head.
    fork = await _plant_token(client, settings, user.user_id, family_id, head_at - 1)
    with structlog.testing.capture_logs() as logs:
        status, _ = await refresh(client, fork)
    assert status == 401
    assert [e for e in logs if e["event"] == "security.refresh_token_reused"]
    status, _ = await refresh(client, pair["refresh_token"])
    assert status == 401, "the whole family is revoked, the head too"


async def test_a_rotation_not_replicated_here_yet_asks_to_retry_and_revokes_nothing(
    client: TestClient[Any, Any], settings: Settings, make_user: MakeUser
) -> None:
    user = await make_user()
    pair = await sign_in(client, user)
    family_id, head_at = await _family_of(client, pair["refresh_token"])
    # Issued after the head this region knows: its family write is still on its way here.
    newer = await _plant_token(client, settings, user.user_id, family_id, head_at + 1000)
    response = await client.post("/v1/auth/refresh", json={"refresh_token": newer})
    assert response.status == 503
    assert (await response.json())["code"] == "replication_pending"
    assert response.headers["Retry-After"]
    status, _ = await refresh(client, pair["refresh_token"])
    assert status == 200, "nothing was revoked"
