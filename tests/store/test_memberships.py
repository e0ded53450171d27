"""Memberships in PostgreSQL: schema by migration, streaming from one snapshot."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import uuid
from typing import Any

import asyncpg
import pytest

from exporter.store.memberships import (
    EXPORT_HEADER,
    Conn,
    copy_memberships,
    count_memberships,
)
from exporter.store.migrations import migrate, pending
from tests.conftest import SeedRows
from tests.helpers import HOSTILE_TEXT, RAW_EXPORT_QUERY, reference_row


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


async def export_csv(conn: Conn, user_id: str) -> tuple[int, list[list[str]], bytes]:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(bytes(chunk))

    rows = await copy_memberships(conn, user_id, sink)
    data = b"".join(chunks)
    return rows, list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""))), data


async def test_copy_yields_only_the_users_rows_in_id_order_with_a_header(
    pg: asyncpg.Connection[Any], seed_rows: SeedRows
) -> None:
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    await seed_rows(user, 25)
    await seed_rows(other, 10)

    rows, parsed, _ = await export_csv(pg, user)

    assert rows == 25
    assert parsed[0] == list(EXPORT_HEADER)
    expected = await pg.fetch(RAW_EXPORT_QUERY, user)
    assert parsed[1:] == [reference_row(r) for r in expected]
    assert await count_memberships(pg, user) == 25


HOSTILE = HOSTILE_TEXT


async def test_hostile_text_is_quoted_and_neutralised_exactly_as_documented(
    pg: asyncpg.Connection[Any],
) -> None:
    user = str(uuid.uuid4())
    for i, name in enumerate(HOSTILE):
        org = await pg.fetchval("INSERT INTO organizations (name) VALUES ($1) RETURNING id", name)
        await pg.execute(
            "INSERT INTO memberships (user_id, organization_id, plan, status, role, started_on,"
            " price, currency, created_at, updated_at)"
            " VALUES ($1, $2, $3, 'active', $4, '2026-01-31', 12.30, 'EUR',"
            " '2026-11-26 09:30:00.5+01', '2026-11-26 23:59:59+00')",
            user,
            org,
            name,
            HOSTILE[-1 - i],
        )

    rows, parsed, data = await export_csv(pg, user)

    assert rows == len(HOSTILE)
    expected = [reference_row(r) for r in await pg.fetch(RAW_EXPORT_QUERY, user)]
    assert parsed[1:] == expected
    names = [row[2] for row in parsed[1:]]
    assert names[:7] == ["'" + n for n in HOSTILE[:7]]
    assert names[7:] == HOSTILE[7:]
    assert parsed[1][11] == "2026-11-26T08:30:00.5Z"
    assert parsed[1][12] == "2026-11-26T23:59:59Z"
    assert parsed[1][9] == "12.30"
    assert b'"Quote ""me"""' in data  # RFC 4180: quotes doubled inside a quoted field
    # Records end in LF (documented in the README): outside quoted fields there is one LF
    # per record and no CR at all; the CRs and LFs of hostile names stay inside quotes.
    unquoted = re.sub(rb'"(?:[^"]|"")*"', b"", data)
    assert b"\r" not in unquoted
    assert unquoted.count(b"\n") == len(HOSTILE) + 1 and data.endswith(b"\n")
    assert "Zürich 東京 🚀".encode() in data  # UTF-8, no transcoding


async def test_copy_reads_one_snapshot_while_rows_change(pg_dsn: str, seed_rows: SeedRows) -> None:
    user = str(uuid.uuid4())
    await seed_rows(user, 3000)
    reader, writer = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    seen = bytearray()
    changed = False

    async def sink(chunk: bytes) -> None:
        nonlocal changed
        seen.extend(chunk)
        if not changed:
            changed = True
            # Committed by another session mid-stream: must not appear in this export.
            await writer.execute(
                "INSERT INTO memberships (user_id, organization_id, plan, status, role,"
                " started_on, price, currency)"
                " SELECT $1, id, 'late', 'active', 'member', current_date, 1, 'EUR'"
                " FROM organizations LIMIT 5",
                user,
            )

    try:
        rows = await copy_memberships(reader, user, sink)
    finally:
        await reader.close()
        await writer.close()
    assert changed
    assert rows == 3000
    assert b",late," not in seen


async def test_total_is_counted_in_the_snapshot_the_copy_reads(
    pg_dsn: str, seed_rows: SeedRows
) -> None:
    user = str(uuid.uuid4())
    await seed_rows(user, 40)
    reader, writer = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    totals: list[int] = []

    async def on_start(total: int) -> None:
        totals.append(total)
        # Committed between the count and the COPY: neither may see it.
        await writer.execute(
            "INSERT INTO memberships (user_id, organization_id, plan, status, role,"
            " started_on, price, currency)"
            " SELECT $1, id, 'late', 'active', 'member', current_date, 1, 'EUR'"
            " FROM organizations LIMIT 5",
            user,
        )

    async def sink(chunk: bytes) -> None:
        pass

    try:
        rows = await copy_memberships(reader, user, sink, on_start=on_start)
    finally:
        await reader.close()
        await writer.close()
    assert totals == [40]
    assert rows == 40


async def test_status_cannot_hold_a_formula_so_the_export_leaves_it_as_is(
    pg: asyncpg.Connection[Any],
) -> None:
    # The export neutralises every free-text column but status, which the schema limits to
    # five words; if that constraint ever goes, status needs safe_text like the others.
    org = await pg.fetchval("INSERT INTO organizations (name) VALUES ('Org') RETURNING id")
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(
            "INSERT INTO memberships (user_id, organization_id, plan, status, role, started_on,"
            " price, currency) VALUES (gen_random_uuid(), $1, 'pro', '=1+1', 'member',"
            " '2026-01-01', 1, 'EUR')",
            org,
        )
