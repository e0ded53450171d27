"""xlsx: a real workbook, written by XlsxWriter in constant-memory mode.

- typed cells: dates and date-times are Excel dates (number + date format; date-times are
  the wall-clock time in the export's time zone, since Excel has no zones: the manifest
  and the README say which), price a number (two decimals; its currency in the column
  beside it), auto_renew a boolean; identifiers (UUIDs) and all other text are string
  cells, so nothing is reformatted (no scientific notation, no dropped zeros) and no text
  is ever a formula (``write_string``, never ``write``);
- the header row is bold, frozen and has an autofilter; columns are sized to their content
  (types by their width, text by the longest value of the first block, capped);
- Excel's limit is 1,048,576 rows per sheet: past it the rows continue on a new sheet
  (``memberships 2``, …) with the header repeated; no row is ever dropped.

Constant memory: XlsxWriter writes each row to a scratch file as soon as the next row
starts (inline strings, no shared-string table), then zips the sheets when the workbook
closes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xlsxwriter  # type: ignore[import-untyped]  # ships no type information

from exporter.formats.base import HashingSink
from exporter.selection import ExportSelection

# Rows per worksheet, the header included (Excel's hard limit).
EXCEL_MAX_ROWS = 1_048_576
SHEET_NAME = "memberships"
# Excel's serial day number of 1970-01-01 (day 0 is 1899-12-30 in the 1900 date system).
_EPOCH_SERIAL = 25_569
_US_PER_DAY = 86_400_000_000
# Column widths in characters: fixed-width types by their text, text by content (capped).
_WIDTHS = {"date": 11, "datetime": 20, "price": 12, "bool": 11, "uuid": 37}
_TEXT_WIDTH_MAX = 60

Cell = Callable[[int, int, Any, Any], Any]


def _kind(name: str) -> str:
    if name in ("started_on", "ends_on"):
        return "date"
    if name in ("created_at", "updated_at"):
        return "datetime"
    if name == "price":
        return "price"
    if name == "auto_renew":
        return "bool"
    if name in ("membership_id", "organization_id"):
        return "uuid"
    return "text"


def _excel_values(column: pa.Array[Any], kind: str) -> list[Any]:
    """One column of a batch as Python values, dates already as Excel serial numbers
    (computed by Arrow for the whole column rather than per cell)."""
    if kind == "date":
        days = column.cast(pa.int32())
        return pc.add(days.cast(pa.float64()), _EPOCH_SERIAL).to_pylist()
    if kind == "datetime":
        # Wall-clock time in the column's zone (the stubs know only zone-less arrays).
        local = pc.local_timestamp(column)  # type: ignore[call-overload]
        micros = local.cast(pa.int64()).cast(pa.float64())
        serial = pc.add(pc.divide(micros, float(_US_PER_DAY)), float(_EPOCH_SERIAL))
        return list(serial.to_pylist())
    if kind == "price":
        return column.cast(pa.float64()).to_pylist()
    return column.to_pylist()


class XlsxWriter:
    """A ``TableWriter`` for xlsx."""

    def __init__(
        self,
        out: HashingSink,
        selection: ExportSelection,
        *,
        temp_dir: Path | None = None,
        max_rows: int = EXCEL_MAX_ROWS,
    ) -> None:
        if max_rows < 2:
            raise ValueError("a sheet needs room for the header and one row")
        options: dict[str, Any] = {"constant_memory": True, "strings_to_formulas": False}
        if temp_dir is not None:
            options["tmpdir"] = str(temp_dir)
        self._book = xlsxwriter.Workbook(out, options)
        self._columns = selection.columns
        self._kinds = [_kind(name) for name in selection.columns]
        self._max_rows = max_rows
        self._header = self._book.add_format({"bold": True})
        date = self._book.add_format({"num_format": "yyyy-mm-dd"})
        stamp = self._book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        price = self._book.add_format({"num_format": "#,##0.00"})
        self._formats = [
            {"date": date, "datetime": stamp, "price": price}.get(kind) for kind in self._kinds
        ]
        self._widths = [
            max(len(name) + 2, _WIDTHS.get(kind, 0))
            for name, kind in zip(self._columns, self._kinds, strict=True)
        ]
        self._text_sized = False
        self._sheets: list[Any] = []
        self._row = 0  # next row on the current sheet
        self._new_sheet()

    def _new_sheet(self) -> None:
        n = len(self._sheets) + 1
        sheet = self._book.add_worksheet(SHEET_NAME if n == 1 else f"{SHEET_NAME} {n}")
        for col, name in enumerate(self._columns):
            sheet.write_string(0, col, name, self._header)
        sheet.freeze_panes(1, 0)
        self._sheets.append(sheet)
        self._row = 1

    def _size_text(self, values: list[list[Any]]) -> None:
        for col, kind in enumerate(self._kinds):
            if kind == "text":
                longest = max((len(v) for v in values[col] if v is not None), default=0)
                self._widths[col] = min(_TEXT_WIDTH_MAX, max(self._widths[col], longest + 2))
        self._text_sized = True

    def write(self, batch: pa.RecordBatch) -> None:
        values = [_excel_values(batch.column(i), kind) for i, kind in enumerate(self._kinds)]
        if not self._text_sized:
            self._size_text(values)
        sheet = self._sheets[-1]
        writers = self._writers(sheet)
        row = self._row
        for record in zip(*values, strict=True):
            if row >= self._max_rows:
                self._new_sheet()
                sheet = self._sheets[-1]
                writers = self._writers(sheet)
                row = self._row
            for col, value in enumerate(record):
                if value is not None:
                    write, fmt = writers[col]
                    write(row, col, value, fmt)
            row += 1
        self._row = row

    def _writers(self, sheet: Any) -> list[tuple[Cell, Any]]:
        by_kind: dict[str, Cell] = {
            "date": sheet.write_number,
            "datetime": sheet.write_number,
            "price": sheet.write_number,
            "bool": sheet.write_boolean,
        }
        return [
            (by_kind.get(kind, sheet.write_string), fmt)
            for kind, fmt in zip(self._kinds, self._formats, strict=True)
        ]

    def close(self) -> None:
        last_col = len(self._columns) - 1
        for index, sheet in enumerate(self._sheets):
            rows = self._row if index == len(self._sheets) - 1 else self._max_rows
            sheet.autofilter(0, 0, max(0, rows - 1), last_col)
            for col, width in enumerate(self._widths):
                sheet.set_column(col, col, width)
        self._book.close()
