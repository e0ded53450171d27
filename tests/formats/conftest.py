"""A user whose memberships hold hostile text, and the reference rows PostgreSQL holds for
them, for reading every format back with its own ecosystem's reader."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from exporter.jobs.produce import ExportFile, write_export_file
from exporter.models import ExportFormat
from exporter.selection import ALL, ExportSelection
from tests.helpers import HOSTILE_TEXT

# Formula triggers, quotes, separators, line breaks, non-ASCII, JSON's escapes, an empty
# string; the NULLs are in ends_on (every other row).
HOSTILE = [
    *HOSTILE_TEXT[:-1],
    'back\\slash \\n \\u0000 {"json": [1]}',
    "",
    "_x0041_ stays as typed",
    HOSTILE_TEXT[-1],
]

# Every column of a membership as PostgreSQL holds it (typed: asyncpg's Python values).
RAW_QUERY = (
    "SELECT m.guid AS membership_id, o.guid AS organization_id, o.name AS organization_name,"
    " m.plan, m.status, m.role, m.started_on, m.ends_on, m.auto_renew, m.price, m.currency,"
    " m.created_at, m.updated_at"
    " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
    " WHERE m.user_id = $1 ORDER BY m.id"
)
STATUSES = ["active", "trialing", "past_due", "cancelled", "expired"]


@pytest.fixture(name="hostile_user")
async def _fix_hostile_user(pg: asyncpg.Connection[Any]) -> str:
    """A user with one membership per hostile text (in the name, plan and role)."""
    user = str(uuid.uuid4())
    for i, name in enumerate(HOSTILE):
        org = await pg.fetchval("INSERT INTO organizations (name) VALUES ($1) RETURNING id", name)
        await pg.execute(
            "INSERT INTO memberships (user_id, organization_id, plan, status, role, started_on,"
            " ends_on, auto_renew, price, currency, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, date '2026-01-01' + $6::int,"
            " CASE WHEN $6::int % 2 = 0 THEN NULL ELSE date '2027-01-01' END, $6::int % 3 = 0,"
            " 12.30 + $6::int, 'EUR',"
            " timestamptz '2026-11-26 09:30:00.5+01' + make_interval(days => $6::int),"
            " timestamptz '2026-03-29 00:59:59+00' + make_interval(hours => $6::int))",
            user,
            org,
            name,
            STATUSES[i % len(STATUSES)],
            HOSTILE[-1 - i],
            i,
        )
    return user


@pytest.fixture(name="pool")
async def _fix_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=2) as pool:
        yield pool


Produce = Callable[..., Awaitable[tuple[ExportFile, bytes]]]


@pytest.fixture(name="produce")
def _fix_produce(pool: asyncpg.Pool[Any]) -> Produce:
    """The worker's rows -> file, into memory: (what it reported, the file's bytes)."""

    async def produce(
        user_id: str, fmt: ExportFormat, selection: ExportSelection = ALL
    ) -> tuple[ExportFile, bytes]:
        out = io.BytesIO()
        written = await write_export_file(
            pool, user_id, out, fmt=fmt, bom=False, selection=selection
        )
        return written, out.getvalue()

    return produce


async def reference(
    pg: asyncpg.Connection[Any], user_id: str, selection: ExportSelection = ALL
) -> list[dict[str, Any]]:
    """The rows ``selection`` picks, filtered here in Python (independently of the SQL under
    test), as dicts of PostgreSQL's typed values."""
    rows = [dict(r) for r in await pg.fetch(RAW_QUERY, user_id)]
    if selection.statuses:
        rows = [r for r in rows if r["status"] in selection.statuses]
    if selection.plan is not None:
        rows = [r for r in rows if r["plan"] == selection.plan]
    if selection.started_from is not None and selection.started_to is not None:
        lo, hi = selection.started_from, selection.started_to
        rows = [r for r in rows if lo <= r["started_on"] <= hi]
    if selection.updated_since is not None:
        since = datetime.combine(selection.updated_since, time(), ZoneInfo(selection.time_zone))
        rows = [r for r in rows if r["updated_at"] >= since]
    return [{name: r[name] for name in selection.columns} for r in rows]
