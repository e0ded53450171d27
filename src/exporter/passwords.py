"""Password hashing with argon2id, off the event loop (each hash costs tens of ms of CPU)."""

from __future__ import annotations

import asyncio
import functools

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError


@functools.cache
def _dummy_hash(
    time_cost: int, memory_cost: int, parallelism: int, hash_len: int, salt_len: int, kind: Type
) -> str:
    """One dummy hash per process and set of parameters (hashing costs tens of ms of CPU; an
    app, a CLI command and every test made its own before)."""
    hasher = PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_cost,
        parallelism=parallelism,
        hash_len=hash_len,
        salt_len=salt_len,
        type=kind,
    )
    return hasher.hash("not a real password")


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        # Verified against when the account does not exist, so unknown and known e-mails
        # cost the same time: the same parameters as real hashes.
        self._dummy_hash = _dummy_hash(
            self._hasher.time_cost,
            self._hasher.memory_cost,
            self._hasher.parallelism,
            self._hasher.hash_len,
            self._hasher.salt_len,
            self._hasher.type,
        )

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
