"""xlsx, read back with openpyxl and compared row by row with PostgreSQL; a sheet that
fills continues on the next."""

from __future__ import annotations

import io
import uuid
import zipfile
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import openpyxl
from openpyxl.utils.escape import unescape
from openpyxl.worksheet.worksheet import Worksheet

from exporter.formats.base import HashingSink
from exporter.formats.xlsx import XlsxStream, column_letter
from exporter.models import ExportFormat
from exporter.selection import COLUMNS, ExportSelection
from exporter.store.memberships import XLSX_CELL_MAX_CHARS, copy_memberships
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
    xlsx escapes them as _xHHHH_ (and a literal "_xHHHH_" as "_x005F_xHHHH_"; ECMA-376
    ST_Xstring); Excel reads them back, openpyxl only in shared strings, so inline strings
    are unescaped here."""
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


async def test_rows_past_a_sheets_limit_continue_on_the_next_sheet_with_the_header(
    pg: asyncpg.Connection[Any], hostile_user: str
) -> None:
    selection = ExportSelection(columns=("plan", "price"))
    out = io.BytesIO()
    sink = HashingSink(out)
    stream = XlsxStream(sink, selection, {}, max_rows=4)  # the header and 3 rows per sheet

    async def write(chunk: bytes) -> None:
        for start in range(0, len(chunk), 7):  # rows split anywhere across chunks
            stream.write(chunk[start : start + 7])

    rows = await copy_memberships(pg, hostile_user, write, selection=selection, render="xlsx")
    stream.close()

    assert rows == len(HOSTILE) == 15
    book = openpyxl.load_workbook(io.BytesIO(out.getvalue()))
    assert book.sheetnames == ["memberships"] + [f"memberships {n}" for n in range(2, 6)]
    sheets = [_rows(s) for s in book.worksheets]
    assert all(rows[0] == ("plan", "price") for rows in sheets)
    assert [len(rows) for rows in sheets] == [4] * 5
    expected = await reference(pg, hostile_user, selection)
    assert [r for rows in sheets for r in rows[1:]] == [
        (r["plan"], float(r["price"])) for r in expected
    ]
    assert [s.freeze_panes for s in book.worksheets] == ["A2"] * 5
    assert [s.auto_filter.ref for s in book.worksheets] == ["A1:B4"] * 5
    assert sink.bytes == len(out.getvalue())


def test_a_workbook_without_rows_has_one_sheet_with_the_header() -> None:
    out = io.BytesIO()
    stream = XlsxStream(HashingSink(out), ExportSelection(columns=("plan",)), {})
    stream.close()

    book = openpyxl.load_workbook(io.BytesIO(out.getvalue()))
    assert [_rows(s) for s in book.worksheets] == [[("plan",)]]


async def test_text_xml_cannot_hold_and_text_longer_than_a_cell_round_trip_as_excel_shows(
    pg: asyncpg.Connection[Any], produce: Produce
) -> None:
    names = [
        "bell\x07 vt\x0b ff\x0c us\x1f soh\x01",  # not allowed in XML 1.0: _xHHHH_
        "non-character \ufffe\uffff",
        "_x0041_ _X0041_ _x004_ _xZZZZ_ _x00e9_",  # only _xHHHH_ is Excel's escape
        "<b>&amp;</b> ]]> & < >",
        "  leading and trailing spaces  ",
        "é" * (XLSX_CELL_MAX_CHARS + 10),  # longer than a cell holds: cut
        "\u2028 line separator, \t tab, \r\n CRLF",
    ]
    user = str(uuid.uuid4())
    for name in names:
        org = await pg.fetchval("INSERT INTO organizations (name) VALUES ($1) RETURNING id", name)
        await pg.execute(
            "INSERT INTO memberships (user_id, organization_id, plan, status, role, started_on,"
            " auto_renew, price, currency, created_at, updated_at) VALUES ($1, $2, $3, 'active',"
            " $3, date '2026-01-01', true, 1, 'EUR', now(), now())",
            user,
            org,
            name[:100],
        )
    selection = ExportSelection(columns=("organization_name", "plan", "role", "ends_on"))

    written, data = await produce(user, ExportFormat.XLSX, selection)

    rows = _rows(openpyxl.load_workbook(io.BytesIO(data)).active)  # type: ignore[arg-type]
    assert written.rows == len(rows) - 1 == len(names)
    assert [r[0] for r in rows[1:]] == [n[:XLSX_CELL_MAX_CHARS] for n in names]
    assert [r[1:] for r in rows[1:]] == [(n[:100], n[:100], None) for n in names]
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        sheet = package.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet and "_x0007_" in sheet and "_x005F_x0041_" in sheet
    # A text's width comes from the first rows' longest value (capped).
    book = openpyxl.load_workbook(io.BytesIO(data))
    assert book.active.column_dimensions["A"].width == 60  # type: ignore[union-attr]
    assert book.active.column_dimensions["B"].width > 40  # type: ignore[union-attr]


def test_column_letters() -> None:
    letters = [column_letter(i) for i in (0, 12, 25, 26, 51, 52, 701, 702)]
    assert letters == ["A", "M", "Z", "AA", "AZ", "BA", "ZZ", "AAA"]
