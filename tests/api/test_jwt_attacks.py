"""Hostile tokens over HTTP: every one is a 401 problem with a Bearer challenge, never a 500,
whether presented as an access token or as a refresh token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization

from exporter.auth import SigningKey
from exporter.config import Settings
from tests.conftest import MakeUser
from tests.helpers import sign_in

Forge = Callable[[SigningKey, Settings, str], str]
# Verification fails before any lookup, so the subject need not exist (the control test
# below shows the same forging path passes for a real user).
SUBJECT = str(uuid.uuid4())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(settings: Settings, subject: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": settings.jwt.issuer,
        "aud": settings.jwt.audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "token_type": "access",
        "scope": "exports:read exports:write",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    headers = {"kid": key.kid, "typ": "JWT", **header}
    return jwt.encode(payload, key.private_key, algorithm="ES256", headers=headers)


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
    return ".".join([*(b64(p) for p in parts), b64(signature)])


def alg_none(key: SigningKey, settings: Settings, sub: str) -> str:
    return unsigned({"alg": "none", "typ": "JWT", "kid": key.kid}, claims(settings, sub))


def hs256_with_public_key(key: SigningKey, settings: Settings, sub: str) -> str:
    """Algorithm confusion: HMAC keyed with our public key, which anyone can fetch."""
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = ".".join(
        b64(json.dumps(p).encode()) for p in (header, claims(settings, sub))
    ).encode()
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64(mac)}"


def unknown_kid(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(SigningKey.generate(), claims(settings, sub), kid="no-such-key")


def our_kid_other_key(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(SigningKey.generate(), claims(settings, sub), kid=key.kid)


def embedded_jwk(key: SigningKey, settings: Settings, sub: str) -> str:
    """The token brings its own key (jwk/jku headers): it must not be trusted."""
    attacker = SigningKey.generate()
    return sign(
        attacker,
        claims(settings, sub),
        kid=key.kid,
        jwk=attacker.public_jwk(),
        jku="http://127.0.0.1:9/jwks.json",
    )


def kid_injection(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub), kid="../../../../dev/null")


def expired(key: SigningKey, settings: Settings, sub: str) -> str:
    now = int(time.time())
    return sign(key, claims(settings, sub, iat=now - 3600, nbf=now - 3600, exp=now - 600))


def not_yet_valid(key: SigningKey, settings: Settings, sub: str) -> str:
    now = int(time.time())
    return sign(key, claims(settings, sub, iat=now, nbf=now + 3600, exp=now + 7200))


def wrong_issuer(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub, iss="https://evil.example"))


def wrong_audience(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub, aud="someone-else"))


def no_expiry(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub, exp=None))


def no_jti(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub, jti=None))


def no_token_type(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub, token_type=None))


def non_string_subject(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub, sub=12345))


def truncated(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub))[:-10]


def signature_stripped(key: SigningKey, settings: Settings, sub: str) -> str:
    return sign(key, claims(settings, sub)).rsplit(".", 1)[0] + "."


def oversized(key: SigningKey, settings: Settings, sub: str) -> str:
    """Validly signed but past MAX_TOKEN_LENGTH (4 KiB): refused before any parsing."""
    return sign(key, claims(settings, sub, padding="x" * 3500))


def garbage_segments(key: SigningKey, settings: Settings, sub: str) -> str:
    return "%%%.!!!.***"


def not_json_header(key: SigningKey, settings: Settings, sub: str) -> str:
    return f"{b64(b'not json')}.{b64(b'{}')}.{b64(b'sig')}"


ATTACKS: list[Forge] = [
    alg_none,
    hs256_with_public_key,
    unknown_kid,
    our_kid_other_key,
    embedded_jwk,
    kid_injection,
    expired,
    not_yet_valid,
    wrong_issuer,
    wrong_audience,
    no_expiry,
    no_jti,
    no_token_type,
    non_string_subject,
    truncated,
    signature_stripped,
    oversized,
    garbage_segments,
    not_json_header,
]


async def assert_401(response: Any) -> None:
    assert response.status == 401, await response.text()
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["code"] == "invalid_token"


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__)
async def test_hostile_access_tokens_are_401(
    client: TestClient[Any, Any], signing_key: SigningKey, settings: Settings, attack: Forge
) -> None:
    token = attack(signing_key, settings, SUBJECT)
    response = await client.get("/v1/exports", headers={"Authorization": f"Bearer {token}"})
    await assert_401(response)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__)
async def test_hostile_refresh_tokens_are_401(
    client: TestClient[Any, Any], signing_key: SigningKey, settings: Settings, attack: Forge
) -> None:
    forged = attack(signing_key, settings, SUBJECT)
    # Refresh-typed variants, so the type check is not what stops them.
    for token in {forged, _as_refresh(forged)}:
        response = await client.post("/v1/auth/refresh", json={"refresh_token": token[:4096]})
        if len(token) > 4096:
            assert response.status in (401, 422)
            continue
        await assert_401(response)


def _as_refresh(token: str) -> str:
    """The same forgery with token_type=refresh, where the payload is readable."""
    parts = token.split(".")
    if len(parts) != 3:
        return token
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return token
    if not isinstance(payload, dict) or "token_type" not in payload:
        return token
    payload["token_type"] = "refresh"
    parts[1] = b64(json.dumps(payload).encode())
    return ".".join(parts)


async def test_a_header_past_the_server_limit_is_a_client_error(
    client: TestClient[Any, Any], signing_key: SigningKey, settings: Settings
) -> None:
    """Past 8 KiB aiohttp's parser refuses the request line itself (400) before our code runs."""
    token = sign(signing_key, claims(settings, "x", padding="x" * 9000))
    response = await client.get("/v1/exports", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 400


async def test_access_token_as_refresh_and_refresh_as_access_are_401(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    pair = await sign_in(client, user)
    await assert_401(
        await client.post("/v1/auth/refresh", json={"refresh_token": pair["access_token"]})
    )
    await assert_401(
        await client.get(
            "/v1/exports", headers={"Authorization": f"Bearer {pair['refresh_token']}"}
        )
    )
    # ...and neither mistake spent or revoked anything: the real refresh still works once.
    response = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert response.status == 200


async def test_a_genuine_token_passes_the_same_path(
    client: TestClient[Any, Any], make_user: MakeUser, signing_key: SigningKey, settings: Settings
) -> None:
    """Control: the forging helpers make tokens the API accepts when nothing is wrong."""
    user = await make_user()
    token = sign(signing_key, claims(settings, user.user_id))
    response = await client.get("/v1/exports", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
