"""JWT access and refresh tokens (ES256), their verification, and scope checks. No I/O.

Verification pins the algorithm to ES256, picks the key by ``kid`` from our own key set
(never from anything the token says beyond the kid), and requires ``iss``, ``aud``, ``exp``,
``iat``, ``sub``, ``jti`` and the token type. Every failure becomes ``TokenError``; the
client only ever learns "invalid token".

Key rotation: one key signs (the newest); every key in the JWKS verifies. The JWKS holds the
signing key plus ``jwt.verification_keys`` (public keys only), so a key can be published
before it signs and kept after it stops, for as long as tokens it signed may live.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
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
from exporter.errors import TokenError, TokenExpired

ALGORITHM = "ES256"
# Real tokens are ~500 bytes; anything far larger is hostile or broken.
MAX_TOKEN_LENGTH = 4096


class TokenType(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"
    # A capability link to one export's file (``issue_download``): its own type *and* its
    # own audience, so it never passes as an access token, nor an access token as one.
    DOWNLOAD = "download"
    # The one-click link of a scheduled export's email that pauses its schedule
    # (``issue_schedule_pause``): its own type and audience, like a download link.
    SCHEDULE_PAUSE = "schedule_pause"


# Appended to ``jwt.audience`` for download links: "exporter-api" -> "exporter-api/download".
DOWNLOAD_AUDIENCE_SUFFIX = "/download"
SCHEDULE_PAUSE_AUDIENCE_SUFFIX = "/schedule-pause"


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
class DownloadClaims:
    """What a verified download link says: whose export, which one, until when."""

    subject: str
    export_id: str
    token_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class SchedulePauseClaims:
    """What a verified pause link names: a schedule of ``subject``."""

    subject: str
    schedule_id: str
    token_id: str


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    # When the refresh token expires (epoch seconds): its stored record lives as long.
    refresh_expires_at: int = 0
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint: the key's ``kid``, the same wherever it is computed."""
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("JWT keys must be EC P-256 keys for ES256")
    jwk = _public_jwk_fields(public_key)
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A P-256 public key that verifies tokens and is published in the JWKS."""

    public_key: ec.EllipticCurvePublicKey
    kid: str

    @classmethod
    def from_public_key(cls, key: ec.EllipticCurvePublicKey) -> VerificationKey:
        return cls(public_key=key, kid=_thumbprint(key))

    def public_jwk(self) -> dict[str, str]:
        return {
            **_public_jwk_fields(self.public_key),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


def load_verification_keys(bundle: str) -> list[VerificationKey]:
    """Every ``PUBLIC KEY`` PEM block in ``bundle``. Private keys are refused: only the signing
    key's holder needs one, so they must not spread through this setting."""
    keys: list[VerificationKey] = []
    for match in _PEM_BLOCK.finditer(bundle):
        if match.group(1) != "PUBLIC KEY":
            raise ValueError(f"jwt.verification_keys takes PUBLIC KEY blocks, not {match.group(1)}")
        key = serialization.load_pem_public_key(match.group(0).encode())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("jwt.verification_keys must be EC P-256 public keys")
        keys.append(VerificationKey.from_public_key(key))
    if bundle.strip() and not keys:
        raise ValueError("jwt.verification_keys holds no PEM public key")
    return keys


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A P-256 key pair and its RFC 7638 thumbprint, used as ``kid``."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str

    @classmethod
    def from_private_key(cls, key: ec.EllipticCurvePrivateKey) -> SigningKey:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("JWT signing key must be an EC P-256 key for ES256")
        return cls(private_key=key, kid=_thumbprint(key.public_key()))

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

    def verification_key(self) -> VerificationKey:
        return VerificationKey(public_key=self.private_key.public_key(), kid=self.kid)

    def public_jwk(self) -> dict[str, str]:
        return self.verification_key().public_jwk()


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
        verification_keys: Iterable[SigningKey | VerificationKey] = (),
    ) -> None:
        self._settings = settings
        self._signing_key = signing_key
        self._keys: dict[str, VerificationKey] = {signing_key.kid: signing_key.verification_key()}
        for key in verification_keys:
            public = key.verification_key() if isinstance(key, SigningKey) else key
            self._keys.setdefault(public.kid, public)

    @property
    def signing_kid(self) -> str:
        return self._signing_key.kid

    @property
    def access_ttl_s(self) -> int:
        return self._settings.access_ttl_s

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.public_jwk() for k in self._keys.values()]}

    def issue_pair(self, subject: str, scopes: Iterable[str], *, now: datetime) -> TokenPair:
        scope_list = sorted(set(scopes))
        return TokenPair(
            refresh_expires_at=int(now.timestamp()) + self._settings.refresh_ttl_s,
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

    def _decode(
        self, token: str, *, audience: str, require: list[str], verify_exp: bool = True
    ) -> Mapping[str, Any]:
        """The payload of a token our keys signed with ES256 for ``audience``."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token missing or too long")
        if not token.isascii():  # a JWS compact serialisation is base64url and dots only
            raise TokenError("token is not ASCII")
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
                key.public_key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_s,
                options={"require": require, "verify_exp": verify_exp},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"rejected: {type(exc).__name__}") from None
        return payload

    def verify(self, token: str, *, expected_type: TokenType) -> Claims:
        """Verify signature, algorithm, issuer, audience, lifetime and token type."""
        if expected_type is TokenType.DOWNLOAD:
            raise ValueError("download links are verified by verify_download")
        payload = self._decode(
            token,
            audience=self._settings.audience,
            require=["iss", "aud", "sub", "iat", "exp", "jti", "token_type"],
        )
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

    @property
    def download_audience(self) -> str:
        return self._settings.audience + DOWNLOAD_AUDIENCE_SUFFIX

    def issue_download(
        self, subject: str, *, export_id: str, expires_at: datetime, now: datetime
    ) -> str:
        """A capability link token for one export of ``subject``, valid until ``expires_at``
        (the file's expiry). It carries no scope and is refused everywhere but the download
        route; it is never stored, so the only copies are in the email and the caller's hands.
        """
        return self._issue_capability(
            subject,
            audience=self.download_audience,
            token_type=TokenType.DOWNLOAD,
            names=("export_id", export_id),
            expires_at=expires_at,
            now=now,
        )

    def verify_download(self, token: str, *, now: datetime) -> DownloadClaims:
        """Verify a download link. ``TokenExpired`` only for a genuine link of ours whose time
        is up (checked last, after signature, audience and type); ``TokenError`` otherwise."""
        subject, export_id, token_id, exp = self._verify_capability(
            token,
            audience=self.download_audience,
            token_type=TokenType.DOWNLOAD,
            names="export_id",
            now=now,
            expired="download link expired",
        )
        return DownloadClaims(
            subject=subject, export_id=export_id, token_id=token_id, expires_at=exp
        )

    @property
    def schedule_pause_audience(self) -> str:
        return self._settings.audience + SCHEDULE_PAUSE_AUDIENCE_SUFFIX

    def issue_schedule_pause(
        self, subject: str, *, schedule_id: str, expires_at: datetime, now: datetime
    ) -> str:
        """A token that pauses one schedule of ``subject`` (the one-click link of a scheduled
        export's email). No scope; refused everywhere but the pause route."""
        return self._issue_capability(
            subject,
            audience=self.schedule_pause_audience,
            token_type=TokenType.SCHEDULE_PAUSE,
            names=("schedule_id", schedule_id),
            expires_at=expires_at,
            now=now,
        )

    def verify_schedule_pause(self, token: str, *, now: datetime) -> SchedulePauseClaims:
        """Verify a pause link: ``TokenExpired`` for a genuine one whose time is up (checked
        after signature, audience and type), ``TokenError`` otherwise."""
        subject, schedule_id, token_id, _ = self._verify_capability(
            token,
            audience=self.schedule_pause_audience,
            token_type=TokenType.SCHEDULE_PAUSE,
            names="schedule_id",
            now=now,
            expired="pause link expired",
        )
        return SchedulePauseClaims(subject=subject, schedule_id=schedule_id, token_id=token_id)

    def _issue_capability(
        self,
        subject: str,
        *,
        audience: str,
        token_type: TokenType,
        names: tuple[str, str],
        expires_at: datetime,
        now: datetime,
    ) -> str:
        """A capability token (a download or pause link): its own audience and type, the one
        thing it names (``names``: claim, value), no scope, never stored."""
        iat = int(now.timestamp())
        claim, value = names
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "aud": audience,
            "sub": subject,
            "iat": iat,
            "nbf": iat,
            "exp": int(expires_at.timestamp()),
            "jti": str(uuid.uuid4()),
            "token_type": token_type.value,
            claim: value,
        }
        return jwt.encode(
            claims,
            self._signing_key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._signing_key.kid, "typ": "JWT"},
        )

    def _verify_capability(
        self,
        token: str,
        *,
        audience: str,
        token_type: TokenType,
        names: str,
        now: datetime,
        expired: str,
    ) -> tuple[str, str, str, int]:
        """(subject, the named value, token id, exp) of a capability token of ours.
        ``TokenExpired`` (message ``expired``) only for a genuine one whose time is up,
        checked last; ``TokenError`` for anything else."""
        payload = self._decode(
            token,
            audience=audience,
            require=["iss", "aud", "sub", "iat", "exp", "jti", "token_type", names],
            verify_exp=False,
        )
        if payload.get("token_type") != token_type.value:
            raise TokenError(f"expected token type {token_type.value!r}")
        subject, value, exp = payload["sub"], payload[names], payload["exp"]
        if (
            not isinstance(subject, str)
            or not subject
            or not isinstance(value, str)
            or not value
            or type(exp) is not int
        ):
            raise TokenError("malformed claims")
        if exp + self._settings.leeway_s <= int(now.timestamp()):
            raise TokenExpired(expired)
        return subject, value, str(payload["jti"]), exp


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
    extra = load_verification_keys(settings.verification_keys or "")
    return TokenService(settings, key, verification_keys=extra)
