"""Parquet, read back with pyarrow and compared row by row with PostgreSQL."""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from exporter.models import ExportFormat
from exporter.selection import COLUMNS, ExportSelection
from tests.formats.conftest import HOSTILE, Produce, reference


async def test_parquet_is_typed_compressed_and_holds_every_row_exactly(
    pg: asyncpg.Connection[Any], hostile_user: str, produce: Produce
) -> None:
    written, data = await produce(hostile_user, ExportFormat.PARQUET)

    parquet = pq.ParquetFile(io.BytesIO(data))
    table = parquet.read()
    assert table.column_names == list(COLUMNS)
    schema = table.schema
    assert schema.field("started_on").type == pa.date32()
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("price").type == pa.decimal128(12, 2)
    assert schema.field("auto_renew").type == pa.bool_()
    assert schema.field("membership_id").type == pa.string()
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    rows = table.to_pylist()
    expected = await reference(pg, hostile_user)
    for row in expected:
        row["membership_id"], row["organization_id"] = (
            str(row["membership_id"]),
            str(row["organization_id"]),
        )
    assert rows == expected  # aware datetimes compare as instants; Decimals exactly
    assert [r["organization_name"] for r in rows] == HOSTILE  # exact, empty string kept
    assert rows[0]["ends_on"] is None and rows[1]["ends_on"] is not None
    assert written.rows == len(HOSTILE) and written.file_bytes == len(data)


async def test_parquet_columns_filters_and_time_zone(
    pg: asyncpg.Connection[Any], hostile_user: str, produce: Produce
) -> None:
    selection = ExportSelection(
        columns=("created_at", "plan", "started_on"),
        started_from=date(2026, 1, 3),
        started_to=date(2026, 1, 9),
        time_zone="America/New_York",
    )
    written, data = await produce(hostile_user, ExportFormat.PARQUET, selection)

    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == ["created_at", "plan", "started_on"]
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="America/New_York")
    expected = await reference(pg, hostile_user, selection)
    assert table.to_pylist() == expected and written.rows == len(expected) == 7
