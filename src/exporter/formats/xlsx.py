"""xlsx: a real workbook whose rows PostgreSQL renders as SpreadsheetML, zipped as they stream.

PostgreSQL's COPY sends one ``<row>`` per line (``store/memberships.xlsx_cell_sql``: typed,
XML-escaped cells); ``XlsxStream`` writes them into the current sheet's entry of a zip as
they arrive, with the sheet's head and tail around them and the rest of the package
(ECMA-376 SpreadsheetML, the minimal package: ``[Content_Types].xml``, ``_rels/.rels``,
``xl/workbook.xml``, ``xl/_rels/workbook.xml.rels``, ``xl/styles.xml``,
``xl/worksheets/sheetN.xml``) at the end. No row is parsed in Python: this process only
counts line ends (to split sheets) and compresses.

- typed cells: dates and date-times are Excel dates (serial day numbers with a date format;
  date-times the wall-clock time in the export's time zone, since Excel has no zones),
  price a number (``#,##0.00``; its currency in the column beside it), auto_renew a
  boolean; identifiers (UUIDs) and all other text are inline strings (``t="inlineStr"``),
  so nothing is reformatted (no scientific notation, no dropped zeros) and no text is ever
  a formula. Text longer than Excel's 32,767 characters per cell is cut there.
- the header row is bold, frozen and has an autofilter; columns are sized to their content
  (fixed-width types by their text, free text by the longest value of the first rows,
  capped), decided before the first row since ``<cols>`` precedes ``<sheetData>``;
- Excel's limit is 1,048,576 rows per sheet: past it the rows continue on a new sheet
  (``memberships 2``, …) with the header repeated; no row is ever dropped.

Constant memory: one COPY chunk and the deflate window at a time; the zip is written front
to back (data descriptors after each entry), so it streams to a non-seekable sink.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import escape, quoteattr

from exporter.formats.base import HashingSink
from exporter.formats.ziparchive import ZipArchive
from exporter.selection import ExportSelection
from exporter.store.memberships import XLSX_STYLE_DATE, XLSX_STYLE_DATETIME, XLSX_STYLE_PRICE

# Rows per worksheet, the header included (Excel's hard limit).
EXCEL_MAX_ROWS = 1_048_576
SHEET_NAME = "memberships"
# Column widths in characters: fixed-width types by their text, text by content (capped).
_WIDTHS = {"date": 11, "datetime": 20, "price": 12, "bool": 11, "uuid": 37}
_TEXT_WIDTH_MAX = 60

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'

_STYLES = (
    _XML_HEAD + f'<styleSheet xmlns="{_MAIN}">'
    '<numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/>'
    '<numFmt numFmtId="165" formatCode="yyyy-mm-dd hh:mm:ss"/></numFmts>'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="5">'
    '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    # 4: Excel's built-in "#,##0.00"
    '<xf numFmtId="4" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    "</cellXfs>"
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)
# The cell styles the SQL refers to, as written above.
assert (XLSX_STYLE_DATE, XLSX_STYLE_DATETIME, XLSX_STYLE_PRICE) == (2, 3, 4)


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


def column_letter(index: int) -> str:
    """A (0), B, …, Z, AA, …"""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def column_widths(selection: ExportSelection, text_lengths: Mapping[str, int]) -> list[int]:
    """Each column's width in characters: its name's, its type's, or its longest text."""
    widths = []
    for name in selection.columns:
        kind = _kind(name)
        width = max(len(name) + 2, _WIDTHS.get(kind, 0))
        if kind == "text":
            width = min(_TEXT_WIDTH_MAX, max(width, text_lengths.get(name, 0) + 2))
        widths.append(width)
    return widths


class XlsxStream:
    """A workbook whose sheets' rows arrive as bytes: ``write`` COPY's chunks (whole lines
    of ``<row>…</row>``, split anywhere), then ``close``."""

    def __init__(
        self,
        out: HashingSink,
        selection: ExportSelection,
        text_lengths: Mapping[str, int],
        *,
        max_rows: int = EXCEL_MAX_ROWS,
    ) -> None:
        if max_rows < 2:
            raise ValueError("a sheet needs room for the header and one row")
        self._zip = ZipArchive(out)
        self._columns = selection.columns
        self._last_col = column_letter(len(selection.columns) - 1)
        self._max_rows = max_rows
        widths = column_widths(selection, text_lengths)
        cols = "".join(
            f'<col min="{i}" max="{i}" width="{w}" customWidth="1"/>'
            for i, w in enumerate(widths, start=1)
        )
        header = "".join(
            f'<c t="inlineStr" s="1"><is><t>{escape(name)}</t></is></c>' for name in self._columns
        )
        # What follows each sheet's views: its row height, column widths, the header row.
        self._sheet_head = (
            f'<sheetFormatPr defaultRowHeight="15"/><cols>{cols}</cols>'
            f"<sheetData><row>{header}</row>\n"
        )
        self._sheet_rows: list[int] = []  # rows of each sheet, the header included
        self._open = False  # a sheet's entry is open in the archive
        self._rows = 0  # rows on the open sheet, the header included

    def _open_sheet(self) -> None:
        n = len(self._sheet_rows) + 1
        # Without Zip64 (which some readers refuse): a sheet's XML must stay under 4 GiB,
        # ~4 KB per row at a full sheet, where a typical row is ~0.6 KB; past it the
        # archive raises and the export fails rather than write a broken file.
        self._zip.open(f"xl/worksheets/sheet{n}.xml")
        selected = ' tabSelected="1"' if n == 1 else ""
        self._zip.write(
            (
                _XML_HEAD + f'<worksheet xmlns="{_MAIN}" xmlns:r="{_REL}">'
                f'<sheetViews><sheetView{selected} workbookViewId="0">'
                '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
                '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/>'
                f"</sheetView></sheetViews>{self._sheet_head}"
            ).encode()
        )
        self._open = True
        self._sheet_rows.append(1)
        self._rows = 1

    def _close_sheet(self) -> None:
        self._sheet_rows[-1] = self._rows
        self._zip.write(
            f'</sheetData><autoFilter ref="A1:{self._last_col}{self._rows}"/></worksheet>'.encode()
        )
        self._zip.close_entry()
        self._open = False

    def write(self, chunk: bytes) -> None:
        """Append COPY's bytes: rows end with a line feed, and no row holds one."""
        while chunk:
            if not self._open:
                self._open_sheet()
            room = self._max_rows - self._rows
            ends = chunk.count(b"\n")
            if ends < room:
                self._zip.write(chunk)
                self._rows += ends
                return
            cut = -1
            for _ in range(room):
                cut = chunk.index(b"\n", cut + 1)
            self._zip.write(chunk[: cut + 1])
            self._rows += room
            self._close_sheet()
            chunk = chunk[cut + 1 :]

    def close(self) -> None:
        """Finish the last sheet (or the only one, empty but for its header) and the package."""
        if self._open:
            self._close_sheet()
        elif not self._sheet_rows:
            self._open_sheet()
            self._close_sheet()
        sheets = range(1, len(self._sheet_rows) + 1)
        names = [SHEET_NAME if n == 1 else f"{SHEET_NAME} {n}" for n in sheets]
        overrides = "".join(
            f'<Override PartName="/xl/worksheets/sheet{n}.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            for n in sheets
        )
        content_types = (
            _XML_HEAD
            + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/'
            'vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/styles.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
            f"{overrides}</Types>"
        )
        root_rels = (
            _XML_HEAD + f'<Relationships xmlns="{_PKG_REL}">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
            '2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        )
        sheet_elements = "".join(
            f'<sheet name={quoteattr(name)} sheetId="{n}" r:id="rId{n}"/>'
            for n, name in zip(sheets, names, strict=True)
        )
        # The autofilters' ranges, as Excel itself names them (hidden, one per sheet).
        filters = "".join(
            f'<definedName name="_xlnm._FilterDatabase" localSheetId="{n - 1}" hidden="1">'
            f"{escape(_quoted(name))}!$A$1:${self._last_col}${rows}</definedName>"
            for n, name, rows in zip(sheets, names, self._sheet_rows, strict=True)
        )
        workbook = (
            _XML_HEAD + f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}">'
            '<bookViews><workbookView activeTab="0"/></bookViews>'
            f"<sheets>{sheet_elements}</sheets><definedNames>{filters}</definedNames>"
            "</workbook>"
        )
        sheet_rels = "".join(
            f'<Relationship Id="rId{n}" Type="{_REL}/worksheet" Target="worksheets/sheet{n}.xml"/>'
            for n in sheets
        )
        styles_id = len(self._sheet_rows) + 1
        workbook_rels = (
            _XML_HEAD + f'<Relationships xmlns="{_PKG_REL}">{sheet_rels}'
            f'<Relationship Id="rId{styles_id}" Type="{_REL}/styles" Target="styles.xml"/>'
            "</Relationships>"
        )
        for name, text in (
            ("xl/workbook.xml", workbook),
            ("xl/_rels/workbook.xml.rels", workbook_rels),
            ("xl/styles.xml", _STYLES),
            ("_rels/.rels", root_rels),
            ("[Content_Types].xml", content_types),
        ):
            self._zip.add(name, text.encode())
        self._zip.close()


def _quoted(sheet: str) -> str:
    """A sheet's name as a formula refers to it: 'memberships 2'."""
    return "'" + sheet.replace("'", "''") + "'"
