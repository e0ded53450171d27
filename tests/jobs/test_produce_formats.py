"""Rows -> file for the formats beside CSV: the progress the worker reports counts rows as
each format writes them, and ends at the total."""

from __future__ import annotations

import io
import uuid

import asyncpg
import pytest

from exporter.jobs.produce import write_export_file
from exporter.jobs.progress import ExportProgress
from exporter.models import ExportFormat
from exporter.selection import ExportSelection
from tests.conftest import SeedRows


@pytest.mark.parametrize("fmt", [ExportFormat.JSONL, ExportFormat.PARQUET, ExportFormat.XLSX])
async def test_progress_counts_every_row_of_each_format(
    pg_dsn: str, seed_rows: SeedRows, fmt: ExportFormat
) -> None:
    user = str(uuid.uuid4())
    await seed_rows(user, 25_000)  # more than one typed block
    writes: list[tuple[int, int | None]] = []

    async def record(rows: int, total: int | None) -> None:
        writes.append((rows, total))

    progress = ExportProgress(record, interval_s=0.0)
    selection = ExportSelection(statuses=("active", "expired"))
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) as pool:
        written = await write_export_file(
            pool, user, io.BytesIO(), fmt=fmt, bom=False, progress=progress, selection=selection
        )

    assert written.rows == 10_000  # two statuses of five, in turn
    assert writes[0] == (0, 10_000)  # the total, counted with the filters, before any row
    assert progress.total == 10_000 and progress.rows == 10_000
