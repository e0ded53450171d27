"""JSON lines, read back with ``json`` and compared row by row with PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from exporter.models import ExportFormat
from exporter.selection import COLUMNS, ExportSelection
from tests.formats.conftest import HOSTILE, Produce, reference
from tests.helpers import reference_timestamp


def _as_json(name: str, value: Any) -> Any:
    """What the README promises for one value in a JSON line."""
    if value is None or isinstance(value, bool | str | Decimal):
        return value
    if isinstance(value, datetime):
        return reference_timestamp(value)
    return str(value) if name.endswith("_id") else value.isoformat()


async def test_jsonl_holds_every_row_exactly_with_the_csv_names_and_types(
    pg: asyncpg.Connection[Any], hostile_user: str, produce: Produce
) -> None:
    written, data = await produce(hostile_user, ExportFormat.JSONL)

    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == "" and written.rows == len(HOSTILE) == len(lines) - 1
    parsed = [json.loads(line, parse_float=Decimal) for line in lines[:-1]]
    expected = await reference(pg, hostile_user)
    assert parsed == [{k: _as_json(k, v) for k, v in row.items()} for row in expected]
    assert [list(p) for p in parsed] == [list(COLUMNS)] * len(parsed)  # names, in order
    # Values are exact: no formula neutralisation (JSON is data for programs).
    assert [p["organization_name"] for p in parsed] == HOSTILE
    assert parsed[0]["ends_on"] is None and parsed[1]["ends_on"] == "2027-01-01"
    assert written.file_bytes == len(data)


async def test_jsonl_columns_filters_and_time_zone(
    pg: asyncpg.Connection[Any], hostile_user: str, produce: Produce
) -> None:
    selection = ExportSelection(
        columns=("updated_at", "organization_name", "price"),
        statuses=("active", "past_due"),
        time_zone="Europe/Paris",
    )
    written, data = await produce(hostile_user, ExportFormat.JSONL, selection)

    parsed = [json.loads(line, parse_float=Decimal) for line in data.decode().splitlines()]
    expected = await reference(pg, hostile_user, selection)
    assert 0 < written.rows == len(parsed) == len(expected) < len(HOSTILE)
    for got, want in zip(parsed, expected, strict=True):
        assert list(got) == ["updated_at", "organization_name", "price"]
        assert got["organization_name"] == want["organization_name"]
        assert got["price"] == want["price"]
        stamp = datetime.fromisoformat(got["updated_at"])
        assert stamp == want["updated_at"]
        assert stamp.utcoffset() == want["updated_at"].astimezone(stamp.tzinfo).utcoffset()
    # Paris: +01:00 before the last Sunday of March 2026 (01:00 UTC), +02:00 from then on.
    assert parsed[0]["updated_at"] == "2026-03-29T01:59:59+01:00"
    assert parsed[1]["updated_at"].endswith("+02:00")
