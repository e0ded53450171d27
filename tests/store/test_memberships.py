"""Memberships in PostgreSQL: schema by migration, streaming from one snapshot."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from exporter.store.memberships import EXPORT_HEADER, count_memberships, stream_memberships
from exporter.store.migrations import migrate, pending
from tests.conftest import SeedRows


async def test_migrations_are_applied_once_and_are_idempotent(pg_dsn: str) -> None:
    assert await asyncio.to_thread(pending, pg_dsn) == []
    assert await asyncio.to_thread(migrate, pg_dsn) == []


async def test_schema_has_identity_keys_guids_and_the_export_index(
    pg: asyncpg.Connection[Any],
) -> None:
    columns = {
        (r["table_name"], r["column_name"]): r["data_type"]
        for r in await pg.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_name IN ('organizations', 'memberships')"
        )
    }
    for table in ("organizations", "memberships"):
        assert columns[(table, "id")] == "bigint"
        assert columns[(table, "guid")] == "uuid"
    index = await pg.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'memberships_user_id_id_idx'"
    )
    assert "(user_id, id)" in index


async def test_stream_yields_only_the_users_rows_in_id_order_in_batches(
    pg: asyncpg.Connection[Any], seed_rows: SeedRows
) -> None:
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    await seed_rows(user, 25)
    await seed_rows(other, 10)
    expected = [
        r["guid"]
        for r in await pg.fetch("SELECT guid FROM memberships WHERE user_id = $1 ORDER BY id", user)
    ]

    batches = [batch async for batch in stream_memberships(pg, user, prefetch=10)]

    assert [len(b) for b in batches] == [10, 10, 5]
    rows = [row for batch in batches for row in batch]
    assert [row[0] for row in rows] == expected
    assert all(len(row) == len(EXPORT_HEADER) for row in rows)
    assert await count_memberships(pg, user) == 25


async def test_stream_reads_one_snapshot_while_rows_change(
    pg: asyncpg.Connection[Any], pg_dsn: str, seed_rows: SeedRows
) -> None:
    user = str(uuid.uuid4())
    await seed_rows(user, 30)
    writer = await asyncpg.connect(pg_dsn)
    try:
        seen = 0
        async for batch in stream_memberships(pg, user, prefetch=10):
            if seen == 0:
                # Committed by another session mid-stream: must not appear in this export.
                await writer.execute(
                    "INSERT INTO memberships (user_id, organization_id, plan, status, role,"
                    " started_on, price, currency)"
                    " SELECT $1, id, 'x', 'active', 'member', current_date, 1, 'EUR'"
                    " FROM organizations LIMIT 5",
                    user,
                )
                await writer.execute(
                    "DELETE FROM memberships WHERE id = (SELECT max(id)"
                    " FROM memberships WHERE user_id = $1 AND plan <> 'x')",
                    user,
                )
            seen += len(batch)
    finally:
        await writer.close()
    assert seen == 30
    assert await count_memberships(pg, user) == 34


async def test_stream_runs_in_a_read_only_transaction(
    pg: asyncpg.Connection[Any], seed_rows: SeedRows
) -> None:
    user = str(uuid.uuid4())
    await seed_rows(user, 1)
    async for _ in stream_memberships(pg, user, prefetch=10):
        assert await pg.fetchval("SHOW transaction_read_only") == "on"
        assert await pg.fetchval("SHOW transaction_isolation") == "repeatable read"
