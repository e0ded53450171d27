"""xlsx, read back with openpyxl and compared row by row with PostgreSQL; a sheet that
fills continues on the next."""

from __future__ import annotations

import io
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import openpyxl
import pyarrow as pa
from openpyxl.utils.escape import unescape
from openpyxl.worksheet.worksheet import Worksheet

from exporter.formats.arrow import schema_of
from exporter.formats.base import HashingSink
from exporter.formats.xlsx import XlsxWriter
from exporter.models import ExportFormat
from exporter.selection import COLUMNS, ExportSelection
from tests.formats.conftest import HOSTILE, Produce, reference


def _excel(value: Any, zone: ZoneInfo) -> Any:
    """What a cell should hold for one PostgreSQL value, as openpyxl reads it back."""
    if isinstance(value, datetime):
        return value.astimezone(zone).replace(tzinfo=None)
    if isinstance(value, date):
        return datetime.combine(value, time())  # an Excel date: a day number, no zone
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, bool | str):
        return value
    return str(value)  # UUIDs, as text


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        return abs(a - b) < timedelta(milliseconds=1)  # Excel keeps days as a double
    return bool(a == b)


def _rows(sheet: Worksheet) -> list[tuple[Any, ...]]:
    """The sheet's values as Excel shows them. XML cannot hold most control characters, so
    xlsx escapes them as _xHHHH_ (and a literal "_x" as "_x005F_x"; ECMA-376 ST_Xstring);
    Excel reads them back, openpyxl only in shared strings, so inline strings are
    unescaped here."""
    return [
        tuple(unescape(v) if isinstance(v, str) else v for v in row)
        for row in sheet.iter_rows(values_only=True)
    ]


async def test_xlsx_holds_typed_cells_text_never_formulas_and_a_frozen_filtered_header(
    pg: asyncpg.Connection[Any], hostile_user: str, produce: Produce
) -> None:
    written, data = await produce(hostile_user, ExportFormat.XLSX)

    book = openpyxl.load_workbook(io.BytesIO(data))
    (sheet,) = book.worksheets
    assert sheet.title == "memberships"
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:M{len(HOSTILE) + 1}"
    assert sheet.column_dimensions["A"].width >= 36  # a UUID fits
    rows = _rows(sheet)
    assert rows[0] == COLUMNS
    expected = await reference(pg, hostile_user)
    utc = ZoneInfo("UTC")
    assert len(rows) - 1 == len(expected) == written.rows
    for got, want in zip(rows[1:], expected, strict=True):
        wanted = [_excel(v, utc) for v in want.values()]
        assert all(_close(a, b) for a, b in zip(got, wanted, strict=True)), (got, wanted)
    # Every hostile name is a string cell holding the exact text, never a formula; the
    # empty string is an empty text cell... which openpyxl, like Excel, reads as empty.
    names = [sheet.cell(row=i + 2, column=3) for i in range(len(HOSTILE))]
    assert all(c.data_type == "s" for c in names if c.value is not None)
    assert [unescape(str(c.value)) if c.value else None for c in names] == [
        h or None for h in HOSTILE
    ]
    started = sheet["G2"]
    assert isinstance(started.value, datetime) and started.number_format == "yyyy-mm-dd"
    assert sheet.cell(row=2, column=10).data_type == "n"  # price, a number
    assert sheet.cell(row=2, column=9).data_type == "b"  # auto_renew, a boolean


async def test_xlsx_columns_filters_and_time_zone(
    pg: asyncpg.Connection[Any], hostile_user: str, produce: Produce
) -> None:
    selection = ExportSelection(
        columns=("updated_at", "membership_id"),
        updated_since=date(2026, 3, 29),
        statuses=("trialing", "cancelled", "expired"),
        time_zone="Asia/Kolkata",
    )
    written, data = await produce(hostile_user, ExportFormat.XLSX, selection)

    rows = _rows(openpyxl.load_workbook(io.BytesIO(data)).active)  # type: ignore[arg-type]
    expected = await reference(pg, hostile_user, selection)
    assert rows[0] == ("updated_at", "membership_id")
    zone = ZoneInfo("Asia/Kolkata")
    assert 0 < written.rows == len(rows) - 1 == len(expected)
    for got, want in zip(rows[1:], expected, strict=True):
        assert _close(got[0], want["updated_at"].astimezone(zone).replace(tzinfo=None))
        assert got[1] == str(want["membership_id"])


def test_rows_past_a_sheets_limit_continue_on_the_next_sheet_with_the_header() -> None:
    selection = ExportSelection(columns=("plan", "price"))
    schema = schema_of(selection)
    out = io.BytesIO()
    sink = HashingSink(out)
    writer = XlsxWriter(sink, selection, max_rows=4)  # the header and 3 rows per sheet
    for start in (0, 4):  # two blocks of 4 rows: 8 rows, 3 + 3 + 2
        plans = pa.array([f"p{start + i}" for i in range(4)])
        prices = pa.array([Decimal(start + i) for i in range(4)], type=schema.field(1).type)
        writer.write(pa.RecordBatch.from_arrays([plans, prices], schema=schema))
    writer.close()

    book = openpyxl.load_workbook(io.BytesIO(out.getvalue()))
    assert book.sheetnames == ["memberships", "memberships 2", "memberships 3"]
    sheets = [_rows(s) for s in book.worksheets]
    assert all(rows[0] == ("plan", "price") for rows in sheets)
    assert [r for rows in sheets for r in rows[1:]] == [(f"p{i}", float(i)) for i in range(8)]
    assert [s.freeze_panes for s in book.worksheets] == ["A2"] * 3
    assert [s.auto_filter.ref for s in book.worksheets] == ["A1:B4", "A1:B4", "A1:B3"]
    assert sink.bytes == len(out.getvalue())
