"""Sign-in, refresh and the published keys, over HTTP."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from exporter.auth import TokenService
from tests.conftest import MakeUser
from tests.helpers import sign_in


async def test_sign_in_returns_a_bearer_pair_with_a_five_minute_access_token(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    response = await client.post(
        "/v1/auth/token", json={"email": user.email.upper(), "password": user.password}
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in response.headers
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user.user_id
    assert claims["token_type"] == "access"
    assert set(claims["scope"].split()) == {"exports:read", "exports:write"}
    assert claims["exp"] - claims["iat"] == 300
    refresh = jwt.decode(body["refresh_token"], options={"verify_signature": False})
    assert refresh["exp"] - refresh["iat"] == 30 * 24 * 3600


@pytest.mark.parametrize("case", ["wrong_password", "unknown_email"])
async def test_bad_credentials_get_one_indistinguishable_answer(
    client: TestClient[Any, Any], make_user: MakeUser, case: str
) -> None:
    user = await make_user()
    email = user.email if case == "wrong_password" else "nobody@example.com"
    response = await client.post(
        "/v1/auth/token", json={"email": email, "password": "wrong-password"}
    )
    assert response.status == 401
    body = await response.json()
    assert body["code"] == "invalid_credentials"
    assert body["detail"] == "Wrong e-mail or password."


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"email": "not-an-email", "password": "x"},
        {"email": "a@b.co"},
        {"email": "a@b.co", "password": "x", "admin": True},
    ],
)
async def test_malformed_sign_in_is_422(
    client: TestClient[Any, Any], payload: dict[str, Any]
) -> None:
    response = await client.post("/v1/auth/token", json=payload)
    assert response.status == 422
    assert (await response.json())["errors"]


async def test_refresh_swaps_a_refresh_token_for_a_working_pair(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    first = await sign_in(client, user)

    response = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})

    assert response.status == 200
    second = await response.json()
    assert second["access_token"] != first["access_token"]
    listing = await client.get(
        "/v1/exports", headers={"Authorization": f"Bearer {second['access_token']}"}
    )
    assert listing.status == 200


async def test_refresh_refuses_access_tokens_and_garbage(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    pair = await sign_in(client, user)
    for token in (pair["access_token"], "garbage", pair["refresh_token"][:-4]):
        response = await client.post("/v1/auth/refresh", json={"refresh_token": token})
        assert response.status == 401
        assert (await response.json())["code"] == "invalid_token"


async def test_jwks_publishes_the_verifying_key_and_nothing_private(
    client: TestClient[Any, Any], tokens: TokenService
) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status == 200
    (key,) = (await response.json())["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256"
    assert "d" not in key
    pair = tokens.issue_pair(
        "someone",
        ["exports:read"],
        now=__import__("datetime").datetime.now(__import__("datetime").UTC),
    )
    assert jwt.get_unverified_header(pair.access_token)["kid"] == key["kid"]
    public = jwt.PyJWK(key)
    claims = jwt.decode(pair.access_token, public, algorithms=["ES256"], audience="exporter-api")
    assert claims["sub"] == "someone"
