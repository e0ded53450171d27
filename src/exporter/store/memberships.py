"""Memberships in PostgreSQL, streamed for export from one consistent snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Column order and names of the export; documented in the README. Stable: users script on it.
EXPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("membership_id", "m.guid"),
    ("organization_id", "o.guid"),
    ("organization_name", "o.name"),
    ("plan", "m.plan"),
    ("status", "m.status"),
    ("role", "m.role"),
    ("started_on", "m.started_on"),
    ("ends_on", "m.ends_on"),
    ("auto_renew", "m.auto_renew"),
    ("price", "m.price"),
    ("currency", "m.currency"),
    ("created_at", "m.created_at"),
    ("updated_at", "m.updated_at"),
)
EXPORT_HEADER: tuple[str, ...] = tuple(name for name, _ in EXPORT_COLUMNS)

# Built from the constant column list above; no input reaches it.
_EXPORT_QUERY = (
    "SELECT "  # noqa: S608
    + ", ".join(expr for _, expr in EXPORT_COLUMNS)
    + " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
    + " WHERE m.user_id = $1 ORDER BY m.id"
)


Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


async def stream_memberships(
    conn: Conn, user_id: str, *, prefetch: int
) -> AsyncIterator[Sequence[Sequence[object]]]:
    """Yield the user's memberships in batches, in id order, from one snapshot.

    A read-only REPEATABLE READ transaction pins one snapshot for the whole stream, and the
    server-side cursor keeps at most ``prefetch`` rows on the client at a time.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(_EXPORT_QUERY, user_id)
        while True:
            batch = await cursor.fetch(prefetch)
            if not batch:
                return
            yield batch
            if len(batch) < prefetch:
                return


async def count_memberships(conn: Conn, user_id: str) -> int:
    value = await conn.fetchval("SELECT count(*) FROM memberships WHERE user_id = $1", user_id)
    return int(value)
