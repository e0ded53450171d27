"""Signing-key rotation, the way docs/security.md tells operators to do it: publish the next
key, switch signing to it, retire the old one. No valid token is refused on the way."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from exporter.app import create_app
from exporter.auth import SigningKey, load_verification_keys
from exporter.config import Settings
from tests.conftest import MakeUser
from tests.helpers import sign_in

Client = TestClient[Any, Any]
Stage = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture(name="stage")
def _fix_stage(settings: Settings) -> Stage:
    """An API configured as an operator would: signing key plus published public keys."""

    @asynccontextmanager
    async def stage(signing: SigningKey, *published: SigningKey) -> AsyncIterator[Client]:
        jwt_settings = settings.jwt.model_copy(
            update={
                "private_key": SecretStr(signing.private_pem()),
                "verification_keys": "\n".join(k.verification_key().public_pem() for k in published)
                or None,
            }
        )
        app = create_app(settings.model_copy(update={"jwt": jwt_settings}))
        async with TestClient(TestServer(app)) as client:
            yield client

    return stage


async def kids(client: Client) -> set[str]:
    return {k["kid"] for k in (await (await client.get("/.well-known/jwks.json")).json())["keys"]}


async def reads(client: Client, access_token: str) -> int:
    response = await client.get("/v1/exports", headers={"Authorization": f"Bearer {access_token}"})
    return response.status


async def test_rotation_procedure_keeps_every_live_token_working(
    stage: Stage, make_user: MakeUser
) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    user = await make_user()

    # 0. Steady state: the old key signs.
    async with stage(old) as api:
        before = await sign_in(api, user)
        assert await kids(api) == {old.kid}

    # 1. Publish the next key everywhere before anything signs with it.
    async with stage(old, new) as api:
        assert await kids(api) == {old.kid, new.kid}
        assert await reads(api, before["access_token"]) == 200
        staged = await sign_in(api, user)
        assert jwt.get_unverified_header(staged["access_token"])["kid"] == old.kid

    # 2. Switch signing to the new key; the old one stays published.
    async with stage(new, old) as api:
        assert await kids(api) == {old.kid, new.kid}
        assert await reads(api, staged["access_token"]) == 200
        response = await api.post(
            "/v1/auth/refresh", json={"refresh_token": staged["refresh_token"]}
        )
        assert response.status == 200  # old-key refresh tokens swap for new-key pairs
        after = await response.json()
        assert jwt.get_unverified_header(after["access_token"])["kid"] == new.kid
        assert await reads(api, after["access_token"]) == 200

    # 3. Retire the old key once its tokens have expired: they stop working.
    async with stage(new) as api:
        assert await kids(api) == {new.kid}
        assert await reads(api, after["access_token"]) == 200
        assert await reads(api, staged["access_token"]) == 401


def test_verification_keys_take_public_keys_only() -> None:
    key = SigningKey.generate()
    bundle = (
        key.verification_key().public_pem() + SigningKey.generate().verification_key().public_pem()
    )
    loaded = load_verification_keys(bundle)
    assert len(loaded) == 2 and loaded[0].kid == key.kid
    assert load_verification_keys("") == []
    with pytest.raises(ValueError, match="PUBLIC KEY"):
        load_verification_keys(key.private_pem())
    with pytest.raises(ValueError, match="no PEM"):
        load_verification_keys("not a key")
