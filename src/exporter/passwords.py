"""Password hashing with argon2id, off the event loop (each hash costs tens of ms of CPU)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        # Verified against when the account does not exist, so unknown and known e-mails
        # cost the same time.
        self._dummy_hash = self._hasher.hash("not a real password")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if ``password`` matches; with no hash, burns the same time and says False."""
        target = password_hash if password_hash is not None else self._dummy_hash
        # "surrogatepass": text that is not Unicode (a lone surrogate) still costs one
        # verification and fails, instead of raising; valid text encodes as UTF-8 does.
        secret = password.encode("utf-8", "surrogatepass")
        try:
            await asyncio.to_thread(self._hasher.verify, target, secret)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None
