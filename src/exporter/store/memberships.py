"""Memberships in PostgreSQL, exported with COPY from one consistent snapshot.

PostgreSQL itself renders the CSV (``COPY (SELECT …) TO STDOUT WITH (FORMAT csv)``): it is
the fastest path measured (≈ psql's own ``\\copy``) and keeps the client's memory flat.
The SELECT does the formatting the CSV promises, so no row is touched in Python:

- text a spreadsheet would evaluate as a formula gets a leading ``'`` (OWASP),
- timestamps are ISO 8601 in UTC with a ``Z`` (fractional seconds only when present),
- booleans are ``true``/``false``, dates ``YYYY-MM-DD``, money an exact decimal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from exporter.csvstream import FORMULA_TRIGGERS
from exporter.errors import StoreUnavailable

Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
Sink = Callable[[bytes], Coroutine[Any, Any, None]]


# Code points of the triggers: ascii() of the first character compares as an integer and
# allocates nothing, where left(x, 1) IN (...) built a text per row (measured at 1M rows:
# the export's SQL about a quarter faster; docs/benchmarks.md).
_TRIGGER_CODES_SQL = ", ".join(str(ord(t)) for t in FORMULA_TRIGGERS)


def safe_text(expr: str) -> str:
    """SQL that neutralises a leading formula trigger in a text column."""
    neutralised = "'''' || " + expr
    return f"CASE WHEN ascii({expr}) IN ({_TRIGGER_CODES_SQL}) THEN {neutralised} ELSE {expr} END"


def utc_timestamp(expr: str) -> str:
    """SQL for ISO 8601 UTC text: 2026-11-26T09:30:00Z (needs DateStyle ISO)."""
    return f"replace(({expr} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z'"


# Column order and names of the export; documented in the README. Stable: users script on it.
EXPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("membership_id", "m.guid"),
    ("organization_id", "o.guid"),
    ("organization_name", safe_text("o.name")),
    ("plan", safe_text("m.plan")),
    # A CHECK constraint limits status to five lower-case words (migration 0001), so no
    # value can start with a trigger; tests/store/test_memberships.py pins the constraint.
    ("status", "m.status"),
    ("role", safe_text("m.role")),
    ("started_on", "m.started_on"),
    ("ends_on", "m.ends_on"),
    ("auto_renew", "m.auto_renew::text"),
    ("price", "m.price"),
    ("currency", "m.currency"),
    ("created_at", utc_timestamp("m.created_at")),
    ("updated_at", utc_timestamp("m.updated_at")),
)
EXPORT_HEADER: tuple[str, ...] = tuple(name for name, _ in EXPORT_COLUMNS)

# Built from the constant column list above; the user id is bound by asyncpg.
EXPORT_QUERY = (
    "SELECT "  # noqa: S608
    + ", ".join(f"{expr} AS {name}" for name, expr in EXPORT_COLUMNS)
    + " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
    + " WHERE m.user_id = $1 ORDER BY m.id"
)


async def copy_memberships(
    conn: Conn,
    user_id: str,
    sink: Sink,
    *,
    on_start: Callable[[int], Awaitable[None]] | None = None,
    timeout_s: float | None = None,
) -> int:
    """Stream the user's memberships as CSV bytes (header first) into ``sink``; returns rows.

    A read-only REPEATABLE READ transaction pins one snapshot; COPY streams it without
    ever holding more than a network buffer on the client. With ``on_start``, the rows are
    first counted in that same snapshot (an index-only scan of ``(user_id, id)``) and
    ``on_start(total)`` runs before the first byte, so the total is exactly what COPY sends.
    ``timeout_s`` bounds the COPY instead of the pool's per-command timeout, which is sized
    for short queries, not for streaming millions of rows.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        if on_start is not None:
            await on_start(await count_memberships(conn, user_id))
        status = await conn.copy_from_query(
            EXPORT_QUERY, user_id, output=sink, format="csv", header=True, timeout=timeout_s
        )
    return int(status.split()[-1])


# What a failed count looks like (PostgreSQL down, restarting, refusing connections).
PG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


async def estimate_rows(pool: asyncpg.Pool[Any], user_id: str, *, timeout_s: float) -> int:
    """The user's rows as an export would hold them now (the index-only count the run
    repeats in its snapshot), within ``timeout_s``; raises ``StoreUnavailable``."""
    try:
        async with asyncio.timeout(timeout_s), pool.acquire() as conn:
            return await count_memberships(conn, user_id)
    except PG_UNAVAILABLE as exc:
        raise StoreUnavailable(f"counting rows: {type(exc).__name__}") from exc


async def count_memberships(conn: Conn, user_id: str) -> int:
    """How many memberships the user has (in the caller's snapshot, if it holds one)."""
    value = await conn.fetchval("SELECT count(*) FROM memberships WHERE user_id = $1", user_id)
    return int(value)
