"""JWT access and refresh tokens (ES256), their verification, and scope checks. No I/O.

Verification pins the algorithm to ES256, picks the key by ``kid`` from our own key set
(never from anything the token says beyond the kid), and requires ``iss``, ``aud``, ``exp``,
``iat``, ``sub``, ``jti`` and the token type. Every failure becomes ``TokenError``; the
client only ever learns "invalid token".
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exporter.config import JwtSettings
from exporter.errors import TokenError

ALGORITHM = "ES256"
# Real tokens are ~500 bytes; anything far larger is hostile or broken.
MAX_TOKEN_LENGTH = 4096


class TokenType(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"


class Scope(StrEnum):
    EXPORTS_READ = "exports:read"
    EXPORTS_WRITE = "exports:write"


DEFAULT_SCOPES: tuple[str, ...] = (Scope.EXPORTS_READ, Scope.EXPORTS_WRITE)


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says about its bearer."""

    subject: str
    token_type: TokenType
    scopes: frozenset[str]
    token_id: str
    issued_at: int
    expires_at: int

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A P-256 key pair and its RFC 7638 thumbprint, used as ``kid``."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str

    @classmethod
    def from_private_key(cls, key: ec.EllipticCurvePrivateKey) -> SigningKey:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("JWT signing key must be an EC P-256 key for ES256")
        jwk = _public_jwk_fields(key.public_key())
        canonical = json.dumps(
            {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
        )
        return cls(private_key=key, kid=_b64url(hashlib.sha256(canonical.encode()).digest()))

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("JWT signing key must be an EC private key")
        return cls.from_private_key(key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()))

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def public_jwk(self) -> dict[str, str]:
        return {
            **_public_jwk_fields(self.private_key.public_key()),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }


def _public_jwk_fields(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


class TokenService:
    """Issues and verifies tokens with one current signing key and any older published keys."""

    def __init__(
        self,
        settings: JwtSettings,
        signing_key: SigningKey,
        *,
        verification_keys: Iterable[SigningKey] = (),
    ) -> None:
        self._settings = settings
        self._signing_key = signing_key
        self._keys = {k.kid: k for k in (signing_key, *verification_keys)}

    @property
    def access_ttl_s(self) -> int:
        return self._settings.access_ttl_s

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.public_jwk() for k in self._keys.values()]}

    def issue_pair(self, subject: str, scopes: Iterable[str], *, now: datetime) -> TokenPair:
        scope_list = sorted(set(scopes))
        return TokenPair(
            access_token=self._issue(
                subject, TokenType.ACCESS, scope_list, now, self._settings.access_ttl_s
            ),
            refresh_token=self._issue(
                subject, TokenType.REFRESH, scope_list, now, self._settings.refresh_ttl_s
            ),
            expires_in=self._settings.access_ttl_s,
        )

    def _issue(
        self, subject: str, token_type: TokenType, scopes: list[str], now: datetime, ttl_s: int
    ) -> str:
        iat = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "sub": subject,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl_s,
            "jti": str(uuid.uuid4()),
            "token_type": token_type.value,
            "scope": " ".join(scopes),
        }
        return jwt.encode(
            claims,
            self._signing_key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._signing_key.kid, "typ": "JWT"},
        )

    def verify(self, token: str, *, expected_type: TokenType) -> Claims:
        """Verify signature, algorithm, issuer, audience, lifetime and token type."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token missing or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed header: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError(f"algorithm {header.get('alg')!r} not allowed")
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise TokenError("unknown kid")
        try:
            payload: Mapping[str, Any] = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=[ALGORITHM],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_s,
                options={"require": ["iss", "aud", "sub", "iat", "exp", "jti", "token_type"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"rejected: {type(exc).__name__}") from None
        if payload.get("token_type") != expected_type.value:
            raise TokenError(f"expected token type {expected_type.value!r}")
        scope = payload.get("scope", "")
        subject = payload["sub"]
        if not isinstance(scope, str) or not isinstance(subject, str) or not subject:
            raise TokenError("malformed claims")
        return Claims(
            subject=subject,
            token_type=expected_type,
            scopes=frozenset(scope.split()),
            token_id=str(payload["jti"]),
            issued_at=int(payload["iat"]),
            expires_at=int(payload["exp"]),
        )


def build_token_service(settings: JwtSettings, *, allow_ephemeral: bool) -> TokenService:
    """The configured key; or, where allowed (local, test), a fresh key for this process only.

    Several API processes must share one key, so deployed environments refuse to start
    without it rather than issue tokens that only one pod accepts.
    """
    if settings.private_key is not None:
        key = SigningKey.from_pem(settings.private_key.get_secret_value())
    elif allow_ephemeral:
        key = SigningKey.generate()
    else:
        raise ValueError("jwt.private_key is required outside local and test")
    return TokenService(settings, key)
