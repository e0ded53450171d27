"""Unit tests for exporter.auth: issuing, verifying and publishing ES256 tokens. No I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import SecretStr

from exporter.auth import (
    DEFAULT_SCOPES,
    MAX_TOKEN_LENGTH,
    Claims,
    Scope,
    SigningKey,
    TokenService,
    TokenType,
    build_token_service,
)
from exporter.config import JwtSettings
from exporter.errors import TokenError

ISSUER = "https://issuer.test"
AUDIENCE = "exporter-test-api"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_segment(obj: object) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _now() -> datetime:
    # Verification reads the real clock, so tokens are issued relative to it.
    return datetime.now(UTC)


def _settings(**overrides: Any) -> JwtSettings:
    return JwtSettings(**{"issuer": ISSUER, "audience": AUDIENCE, **overrides})


def _valid_claims(**overrides: Any) -> dict[str, Any]:
    iat = int(_now().timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": iat,
        "nbf": iat,
        "exp": iat + 300,
        "jti": str(uuid.uuid4()),
        "token_type": "access",
        "scope": "exports:read",
    }
    claims.update(overrides)
    return claims


def _sign(claims: dict[str, Any], key: SigningKey, **headers: Any) -> str:
    """A token signed with ``key`` exactly as the service would, but with chosen claims."""
    return jwt.encode(
        claims,
        key.private_key,
        algorithm="ES256",
        headers={"kid": key.kid, "typ": "JWT", **headers},
    )


def _sign_raw(header: dict[str, Any], claims: dict[str, Any], key: SigningKey) -> str:
    """ES256 over any header at all (PyJWT refuses to encode some odd headers)."""
    signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
    algorithm = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256)
    signature = algorithm.sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{_b64url(signature)}"


def _flip_char(segment: str, index: int) -> str:
    old = segment[index]
    new = "A" if old != "A" else "B"
    return segment[:index] + new + segment[index + 1 :]


@pytest.fixture(name="key")
def fixture_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(name="service")
def fixture_service(key: SigningKey) -> TokenService:
    return TokenService(_settings(), key)


# --- issuing and verifying ------------------------------------------------------------------


def test_issued_pair_verifies_with_subject_scopes_and_type(service: TokenService) -> None:
    pair = service.issue_pair("user-42", DEFAULT_SCOPES, now=_now())

    access = service.verify(pair.access_token, expected_type=TokenType.ACCESS)
    refresh = service.verify(pair.refresh_token, expected_type=TokenType.REFRESH)

    assert access.subject == refresh.subject == "user-42"
    assert access.token_type is TokenType.ACCESS
    assert refresh.token_type is TokenType.REFRESH
    assert access.scopes == refresh.scopes == {"exports:read", "exports:write"}
    assert access.has_scope(Scope.EXPORTS_WRITE)
    assert not access.has_scope("admin")
    assert access.token_id != refresh.token_id
    assert pair.token_type == "Bearer"


def test_each_issued_token_has_a_unique_uuid_jti(service: TokenService) -> None:
    now = _now()
    ids: set[str] = set()
    for _ in range(5):
        pair = service.issue_pair("user-1", [], now=now)
        ids.add(service.verify(pair.access_token, expected_type=TokenType.ACCESS).token_id)
        ids.add(service.verify(pair.refresh_token, expected_type=TokenType.REFRESH).token_id)

    assert len(ids) == 10
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_issued_token_carries_pinned_issuer_audience_and_es256_header(
    service: TokenService, key: SigningKey
) -> None:
    pair = service.issue_pair("user-1", [Scope.EXPORTS_READ], now=_now())

    header = jwt.get_unverified_header(pair.access_token)
    payload = jwt.decode(pair.access_token, options={"verify_signature": False})

    assert header == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    assert payload["iss"] == ISSUER
    assert payload["aud"] == AUDIENCE
    assert payload["token_type"] == "access"
    assert payload["scope"] == "exports:read"
    assert payload["nbf"] == payload["iat"]


def test_scopes_are_deduplicated_and_sorted_in_the_token(service: TokenService) -> None:
    pair = service.issue_pair("u", ["exports:write", "exports:read", "exports:write"], now=_now())

    payload = jwt.decode(pair.access_token, options={"verify_signature": False})
    claims = service.verify(pair.access_token, expected_type=TokenType.ACCESS)

    assert payload["scope"] == "exports:read exports:write"
    assert claims.scopes == frozenset({"exports:read", "exports:write"})


def test_token_without_scopes_verifies_with_no_scopes(service: TokenService) -> None:
    pair = service.issue_pair("u", [], now=_now())

    claims = service.verify(pair.access_token, expected_type=TokenType.ACCESS)

    assert claims.scopes == frozenset()
    assert not claims.has_scope(Scope.EXPORTS_READ)


def test_default_lifetimes_are_300_seconds_access_and_30_days_refresh(key: SigningKey) -> None:
    service = TokenService(JwtSettings(), key)
    now = _now()

    pair = service.issue_pair("u", DEFAULT_SCOPES, now=now)
    access = service.verify(pair.access_token, expected_type=TokenType.ACCESS)
    refresh = service.verify(pair.refresh_token, expected_type=TokenType.REFRESH)

    assert service.access_ttl_s == 300
    assert pair.expires_in == 300
    assert access.issued_at == refresh.issued_at == int(now.timestamp())
    assert access.expires_at - access.issued_at == 300
    assert refresh.expires_at - refresh.issued_at == 30 * 24 * 3600


def test_configured_lifetimes_are_used(key: SigningKey) -> None:
    service = TokenService(_settings(access_ttl_s=60, refresh_ttl_s=3600), key)

    pair = service.issue_pair("u", [], now=_now())
    access = service.verify(pair.access_token, expected_type=TokenType.ACCESS)
    refresh = service.verify(pair.refresh_token, expected_type=TokenType.REFRESH)

    assert pair.expires_in == 60
    assert access.expires_at - access.issued_at == 60
    assert refresh.expires_at - refresh.issued_at == 3600


def test_verify_returns_claims_dataclass(service: TokenService) -> None:
    pair = service.issue_pair("u", [], now=_now())
    assert isinstance(service.verify(pair.access_token, expected_type=TokenType.ACCESS), Claims)


# --- lifetime -------------------------------------------------------------------------------


def test_expired_access_token_is_rejected(service: TokenService) -> None:
    # Issued an hour ago: the 300 s access token is long past exp + leeway.
    pair = service.issue_pair("u", [], now=_now() - timedelta(hours=1))

    with pytest.raises(TokenError):
        service.verify(pair.access_token, expected_type=TokenType.ACCESS)


def test_refresh_token_outlives_the_access_token_issued_with_it(service: TokenService) -> None:
    pair = service.issue_pair("u", [], now=_now() - timedelta(hours=1))

    assert service.verify(pair.refresh_token, expected_type=TokenType.REFRESH).subject == "u"


def test_expired_refresh_token_is_rejected(service: TokenService) -> None:
    pair = service.issue_pair("u", [], now=_now() - timedelta(days=31))

    with pytest.raises(TokenError):
        service.verify(pair.refresh_token, expected_type=TokenType.REFRESH)


def test_token_expired_within_leeway_is_still_accepted(service: TokenService) -> None:
    # exp is 3 s ago; the default leeway is 10 s.
    pair = service.issue_pair("u", [], now=_now() - timedelta(seconds=303))

    assert service.verify(pair.access_token, expected_type=TokenType.ACCESS).subject == "u"


def test_token_expired_beyond_leeway_is_rejected(service: TokenService) -> None:
    # exp is 30 s ago; the default leeway is 10 s.
    pair = service.issue_pair("u", [], now=_now() - timedelta(seconds=330))

    with pytest.raises(TokenError):
        service.verify(pair.access_token, expected_type=TokenType.ACCESS)


def test_token_not_yet_valid_is_rejected(service: TokenService) -> None:
    # iat and nbf an hour in the future: far beyond the leeway.
    pair = service.issue_pair("u", [], now=_now() + timedelta(hours=1))

    with pytest.raises(TokenError):
        service.verify(pair.access_token, expected_type=TokenType.ACCESS)
    with pytest.raises(TokenError):
        service.verify(pair.refresh_token, expected_type=TokenType.REFRESH)


def test_token_from_a_clock_slightly_ahead_is_accepted(service: TokenService) -> None:
    pair = service.issue_pair("u", [], now=_now() + timedelta(seconds=3))

    assert service.verify(pair.access_token, expected_type=TokenType.ACCESS).subject == "u"


def test_future_iat_without_nbf_is_rejected(service: TokenService, key: SigningKey) -> None:
    future = int(_now().timestamp()) + 3600
    claims = _valid_claims(iat=future, exp=future + 300)
    del claims["nbf"]

    with pytest.raises(TokenError):
        service.verify(_sign(claims, key), expected_type=TokenType.ACCESS)


# --- issuer, audience, type -----------------------------------------------------------------


@pytest.mark.parametrize(
    "other_settings",
    [
        pytest.param({"audience": "someone-else"}, id="wrong-audience"),
        pytest.param({"issuer": "https://evil.test"}, id="wrong-issuer"),
    ],
)
def test_token_for_another_issuer_or_audience_is_rejected(
    service: TokenService, key: SigningKey, other_settings: dict[str, str]
) -> None:
    # Same key, so only the iss/aud check can refuse it.
    other = TokenService(_settings(**other_settings), key)
    pair = other.issue_pair("u", DEFAULT_SCOPES, now=_now())

    with pytest.raises(TokenError):
        service.verify(pair.access_token, expected_type=TokenType.ACCESS)


def test_audience_list_containing_ours_is_accepted(service: TokenService, key: SigningKey) -> None:
    token = _sign(_valid_claims(aud=["other-api", AUDIENCE]), key)

    assert service.verify(token, expected_type=TokenType.ACCESS).subject == "user-1"


@pytest.mark.parametrize(
    ("presented", "expected"),
    [
        pytest.param("refresh", TokenType.ACCESS, id="refresh-as-access"),
        pytest.param("access", TokenType.REFRESH, id="access-as-refresh"),
    ],
)
def test_token_of_the_wrong_type_is_rejected(
    service: TokenService, presented: str, expected: TokenType
) -> None:
    pair = service.issue_pair("u", DEFAULT_SCOPES, now=_now())
    token = pair.refresh_token if presented == "refresh" else pair.access_token

    with pytest.raises(TokenError):
        service.verify(token, expected_type=expected)


@pytest.mark.parametrize("token_type", ["ACCESS", "id", "", None, 1])
def test_unknown_token_type_claim_is_rejected(
    service: TokenService, key: SigningKey, token_type: object
) -> None:
    token = _sign(_valid_claims(token_type=token_type), key)

    with pytest.raises(TokenError):
        service.verify(token, expected_type=TokenType.ACCESS)


# --- algorithm and signature ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_token_is_rejected(
    service: TokenService, key: SigningKey, alg: str
) -> None:
    header = _json_segment({"alg": alg, "kid": key.kid, "typ": "JWT"})
    token = f"{header}.{_json_segment(_valid_claims())}."

    with pytest.raises(TokenError):
        service.verify(token, expected_type=TokenType.ACCESS)


def test_pyjwt_alg_none_token_is_rejected(service: TokenService, key: SigningKey) -> None:
    token = jwt.encode(_valid_claims(), "", algorithm="none", headers={"kid": key.kid})

    with pytest.raises(TokenError):
        service.verify(token, expected_type=TokenType.ACCESS)


@pytest.mark.parametrize(
    "public_format",
    [serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.OpenSSH],
    ids=["pem", "openssh"],
)
def test_hs256_token_signed_with_the_public_key_is_rejected(
    service: TokenService, key: SigningKey, public_format: serialization.PublicFormat
) -> None:
    # Algorithm confusion: an attacker who knows the public key uses it as an HMAC secret.
    encoding = (
        serialization.Encoding.OpenSSH
        if public_format is serialization.PublicFormat.OpenSSH
        else serialization.Encoding.PEM
    )
    secret = key.private_key.public_key().public_bytes(encoding, public_format)
    signing_input = (
        f"{_json_segment({'alg': 'HS256', 'kid': key.kid, 'typ': 'JWT'})}."
        f"{_json_segment(_valid_claims())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64url(signature)}"

    with pytest.raises(TokenError):
        service.verify(token, expected_type=TokenType.ACCESS)


@pytest.mark.parametrize("alg", ["ES384", "ES512", "RS256", "PS256", "EdDSA", "HS256"])
def test_header_naming_another_algorithm_is_rejected(
    service: TokenService, key: SigningKey, alg: str
) -> None:
    # Signature is a real ES256 signature; only the header's alg is changed.
    good = _sign(_valid_claims(), key)
    _, payload, signature = good.split(".")
    header = _json_segment({"alg": alg, "kid": key.kid, "typ": "JWT"})

    with pytest.raises(TokenError):
        service.verify(f"{header}.{payload}.{signature}", expected_type=TokenType.ACCESS)


def test_payload_with_changed_subject_is_rejected(service: TokenService) -> None:
    pair = service.issue_pair("victim", DEFAULT_SCOPES, now=_now())
    header, payload, signature = pair.access_token.split(".")
    claims = json.loads(_b64url_decode(payload))
    claims["sub"] = "attacker"
    forged = f"{header}.{_json_segment(claims)}.{signature}"

    with pytest.raises(TokenError):
        service.verify(forged, expected_type=TokenType.ACCESS)


def test_payload_with_a_flipped_character_is_rejected(service: TokenService) -> None:
    pair = service.issue_pair("u", DEFAULT_SCOPES, now=_now())
    header, payload, signature = pair.access_token.split(".")
    # The middle of the segment: every bit there belongs to the payload bytes.
    tampered = f"{header}.{_flip_char(payload, len(payload) // 2)}.{signature}"

    with pytest.raises(TokenError):
        service.verify(tampered, expected_type=TokenType.ACCESS)


@pytest.mark.parametrize("index", [0, 20, 42, 63])
def test_signature_with_a_flipped_character_is_rejected(service: TokenService, index: int) -> None:
    pair = service.issue_pair("u", DEFAULT_SCOPES, now=_now())
    header, payload, signature = pair.access_token.split(".")
    tampered = f"{header}.{payload}.{_flip_char(signature, index)}"

    with pytest.raises(TokenError):
        service.verify(tampered, expected_type=TokenType.ACCESS)


def test_signature_from_another_token_is_rejected(service: TokenService) -> None:
    a = service.issue_pair("a", DEFAULT_SCOPES, now=_now()).access_token
    b = service.issue_pair("b", DEFAULT_SCOPES, now=_now()).access_token
    spliced = ".".join([*b.split(".")[:2], a.split(".")[2]])

    with pytest.raises(TokenError):
        service.verify(spliced, expected_type=TokenType.ACCESS)


def test_token_signed_by_an_unknown_key_is_rejected(service: TokenService) -> None:
    stranger = TokenService(_settings(), SigningKey.generate())
    pair = stranger.issue_pair("u", DEFAULT_SCOPES, now=_now())

    with pytest.raises(TokenError):
        service.verify(pair.access_token, expected_type=TokenType.ACCESS)


def test_token_signed_by_another_key_under_our_kid_is_rejected(
    service: TokenService, key: SigningKey
) -> None:
    # The attacker copies our public kid into the header but signs with their own key.
    stranger = SigningKey.generate()
    token = jwt.encode(
        _valid_claims(), stranger.private_key, algorithm="ES256", headers={"kid": key.kid}
    )

    with pytest.raises(TokenError):
        service.verify(token, expected_type=TokenType.ACCESS)


@pytest.mark.parametrize("kid", [None, "", "nope", "None", 7, ["x"], {"k": 1}])
def test_missing_or_odd_kid_is_rejected(
    service: TokenService, key: SigningKey, kid: object
) -> None:
    header: dict[str, Any] = {"alg": "ES256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid

    with pytest.raises(TokenError):
        service.verify(_sign_raw(header, _valid_claims(), key), expected_type=TokenType.ACCESS)


def test_raw_signing_helper_produces_accepted_tokens(
    service: TokenService, key: SigningKey
) -> None:
    # Positive control for the odd-kid tests above.
    token = _sign_raw({"alg": "ES256", "kid": key.kid}, _valid_claims(), key)

    assert service.verify(token, expected_type=TokenType.ACCESS).subject == "user-1"


# --- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda t: t[:-5], id="signature-shortened"),
        pytest.param(lambda t: t.rsplit(".", 1)[0] + ".", id="signature-empty"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], id="signature-segment-missing"),
        pytest.param(lambda t: t.split(".")[0], id="header-only"),
        pytest.param(lambda t: t[: len(t) // 2], id="half"),
        pytest.param(lambda t: t[1:], id="first-char-dropped"),
    ],
)
def test_truncated_token_is_rejected(service: TokenService, cut: Any) -> None:
    token = service.issue_pair("u", DEFAULT_SCOPES, now=_now()).access_token
    truncated: str = cut(token)
    assert truncated != token

    with pytest.raises(TokenError):
        service.verify(truncated, expected_type=TokenType.ACCESS)


def test_oversized_token_is_rejected_even_when_validly_signed(
    service: TokenService, key: SigningKey
) -> None:
    token = _sign(_valid_claims(padding="x" * MAX_TOKEN_LENGTH), key)
    assert len(token) > MAX_TOKEN_LENGTH

    with pytest.raises(TokenError):
        service.verify(token, expected_type=TokenType.ACCESS)


def test_token_just_under_the_length_limit_is_accepted(
    service: TokenService, key: SigningKey
) -> None:
    base = _sign(_valid_claims(padding=""), key)
    # Each padding character adds 4/3 of a character to the encoded payload.
    padding = "x" * ((MAX_TOKEN_LENGTH - len(base) - 8) * 3 // 4)
    token = _sign(_valid_claims(padding=padding), key)
    assert MAX_TOKEN_LENGTH - 16 < len(token) <= MAX_TOKEN_LENGTH

    assert service.verify(token, expected_type=TokenType.ACCESS).subject == "user-1"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        "Bearer",
        "not-a-token",
        "a.b",
        "a.b.c",
        "a.b.c.d.e",
        "...",
        "é.é.é",
        "\x00",
        "null",
        "W10.e30.",  # header is a JSON array
        "bnVsbA.e30.",  # header is JSON null
        "eyJhbGciOiJFUzI1NiJ9.e30.",  # ES256 header, no kid, empty signature
        "x" * (MAX_TOKEN_LENGTH + 1),
    ],
)
def test_garbage_is_rejected_with_token_error(service: TokenService, garbage: str) -> None:
    with pytest.raises(TokenError):
        service.verify(garbage, expected_type=TokenType.ACCESS)


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "iat", "exp", "jti", "token_type"])
def test_token_missing_a_required_claim_is_rejected(
    service: TokenService, key: SigningKey, claim: str
) -> None:
    claims = _valid_claims()
    del claims[claim]

    with pytest.raises(TokenError):
        service.verify(_sign(claims, key), expected_type=TokenType.ACCESS)


def test_hand_signed_token_with_all_claims_is_accepted(
    service: TokenService, key: SigningKey
) -> None:
    # The positive control for the missing-claim tests: the helper itself produces good tokens.
    claims = _valid_claims()

    verified = service.verify(_sign(claims, key), expected_type=TokenType.ACCESS)

    assert verified.subject == "user-1"
    assert verified.token_id == claims["jti"]
    assert verified.scopes == {"exports:read"}


def test_token_without_scope_claim_has_no_scopes(service: TokenService, key: SigningKey) -> None:
    claims = _valid_claims()
    del claims["scope"]

    assert service.verify(_sign(claims, key), expected_type=TokenType.ACCESS).scopes == set()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"sub": ""}, id="empty-subject"),
        pytest.param({"sub": 42}, id="numeric-subject"),
        pytest.param({"scope": ["exports:read"]}, id="scope-list"),
        pytest.param({"scope": 1}, id="scope-number"),
        pytest.param({"jti": 5}, id="numeric-jti"),
        pytest.param({"iat": "yesterday"}, id="text-iat"),
        pytest.param({"exp": "tomorrow"}, id="text-exp"),
    ],
)
def test_malformed_claim_values_are_rejected(
    service: TokenService, key: SigningKey, bad: dict[str, Any]
) -> None:
    with pytest.raises(TokenError):
        service.verify(_sign(_valid_claims(**bad), key), expected_type=TokenType.ACCESS)


# --- keys and JWKS --------------------------------------------------------------------------


def _rfc7638_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """Computed independently of exporter.auth, from PyJWT's JWK export."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public_key))
    required = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def test_kid_is_the_rfc7638_thumbprint(key: SigningKey) -> None:
    assert key.kid == _rfc7638_thumbprint(key.private_key.public_key())
    assert len(key.kid) == 43  # base64url of 32 bytes, unpadded


def test_generated_keys_have_distinct_kids() -> None:
    assert len({SigningKey.generate().kid for _ in range(5)}) == 5


def test_jwks_publishes_public_members_only(service: TokenService, key: SigningKey) -> None:
    jwks = service.jwks()

    assert list(jwks) == ["keys"]
    [jwk] = jwks["keys"]
    assert jwk["kid"] == key.kid == _rfc7638_thumbprint(key.private_key.public_key())
    assert jwk["kty"] == "EC"
    assert jwk["crv"] == "P-256"
    assert jwk["alg"] == "ES256"
    assert jwk["use"] == "sig"
    assert "d" not in jwk
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    # Coordinates are 32 bytes each, base64url without padding.
    assert len(_b64url_decode(jwk["x"])) == len(_b64url_decode(jwk["y"])) == 32
    assert "=" not in jwk["x"] + jwk["y"]


def test_published_jwks_verifies_issued_tokens(service: TokenService) -> None:
    # What a resource server does: pick the JWK by kid and verify with PyJWT.
    pair = service.issue_pair("u", DEFAULT_SCOPES, now=_now())
    jwk_set = jwt.PyJWKSet.from_dict(service.jwks())
    kid = jwt.get_unverified_header(pair.access_token)["kid"]

    payload = jwt.decode(
        pair.access_token, jwk_set[kid].key, algorithms=["ES256"], audience=AUDIENCE
    )

    assert payload["sub"] == "u"


def test_jwks_lists_current_and_older_keys(key: SigningKey) -> None:
    old = SigningKey.generate()
    service = TokenService(_settings(), key, verification_keys=[old])

    kids = [k["kid"] for k in service.jwks()["keys"]]

    assert kids == [key.kid, old.kid]
    assert all("d" not in k for k in service.jwks()["keys"])


def test_token_from_an_older_published_key_is_still_accepted() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    before_rotation = TokenService(_settings(), old)
    pair = before_rotation.issue_pair("u", DEFAULT_SCOPES, now=_now())

    after_rotation = TokenService(_settings(), new, verification_keys=[old])

    claims = after_rotation.verify(pair.access_token, expected_type=TokenType.ACCESS)
    assert claims.subject == "u"
    # New tokens are signed with the new key.
    fresh = after_rotation.issue_pair("u", DEFAULT_SCOPES, now=_now())
    assert jwt.get_unverified_header(fresh.access_token)["kid"] == new.kid


def test_token_from_a_retired_key_is_rejected() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    pair = TokenService(_settings(), old).issue_pair("u", DEFAULT_SCOPES, now=_now())

    with pytest.raises(TokenError):
        TokenService(_settings(), new).verify(pair.access_token, expected_type=TokenType.ACCESS)


def test_signing_key_round_trips_through_pem(key: SigningKey) -> None:
    pem = key.private_pem()

    restored = SigningKey.from_pem(pem)

    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert restored.kid == key.kid
    assert restored.public_jwk() == key.public_jwk()
    # A token signed by the restored key verifies against the original.
    pair = TokenService(_settings(), restored).issue_pair("u", [], now=_now())
    assert (
        TokenService(_settings(), key).verify(pair.access_token, expected_type=TokenType.ACCESS)
    ).subject == "u"


def test_signing_key_accepts_traditional_openssl_ec_pem(key: SigningKey) -> None:
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()

    assert SigningKey.from_pem(pem).kid == key.kid


def _pem(private_key: Any) -> str:
    data: bytes = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data.decode()


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
        pytest.param(
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="rsa"
        ),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
    ],
)
def test_non_p256_key_is_refused(make_key: Any) -> None:
    with pytest.raises(ValueError, match="JWT signing key must be an EC"):
        SigningKey.from_pem(_pem(make_key()))


def test_non_p256_ec_key_object_is_refused() -> None:
    with pytest.raises(ValueError, match="P-256"):
        SigningKey.from_private_key(ec.generate_private_key(ec.SECP521R1()))


def test_encrypted_pem_is_refused(key: SigningKey) -> None:
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()

    with pytest.raises(TypeError, match="encrypted"):
        SigningKey.from_pem(pem)


# --- build_token_service --------------------------------------------------------------------


def test_build_token_service_uses_the_configured_key(key: SigningKey) -> None:
    settings = _settings(private_key=SecretStr(key.private_pem()))

    service = build_token_service(settings, allow_ephemeral=False)

    assert [k["kid"] for k in service.jwks()["keys"]] == [key.kid]


def test_build_token_service_generates_an_ephemeral_key_where_allowed() -> None:
    a = build_token_service(_settings(), allow_ephemeral=True)
    b = build_token_service(_settings(), allow_ephemeral=True)

    assert a.jwks()["keys"][0]["kid"] != b.jwks()["keys"][0]["kid"]


def test_build_token_service_refuses_to_run_without_a_key_where_not_allowed() -> None:
    with pytest.raises(ValueError, match="private_key is required"):
        build_token_service(_settings(), allow_ephemeral=False)
