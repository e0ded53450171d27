"""What an export email says about its file's format, columns, filters and time zone."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.models import ExportFormat
from exporter.selection import COLUMNS, ExportSelection

_FORMAT_NAMES = {
    ExportFormat.CSV: "CSV",
    ExportFormat.CSV_GZ: "CSV, gzipped",
    ExportFormat.JSONL: "JSON Lines",
    ExportFormat.PARQUET: "Parquet",
    ExportFormat.XLSX: "Excel workbook (xlsx)",
}


def _times(selection: ExportSelection, how: str) -> str:
    return f"Times are in {selection.time_zone} ({how})."


def _note(fmt: ExportFormat, selection: ExportSelection) -> str:
    if fmt is ExportFormat.JSONL:
        return (
            "The file has one JSON object per line (UTF-8), with the CSV's column names. "
            + _times(selection, "ISO 8601 with the offset")
            + " Prices are JSON numbers with their exact decimals."
        )
    if fmt is ExportFormat.PARQUET:
        return (
            "The file is Apache Parquet (zstd): typed columns that pandas, polars, DuckDB "
            "and Spark read as they are. " + _times(selection, "timestamps carry the zone")
        )
    if fmt is ExportFormat.XLSX:
        return (
            "The file is an Excel workbook: dates and prices are real dates and numbers, "
            "identifiers are text. "
            + _times(selection, "the clock time there")
            + " Past 1,048,576 rows the rows continue on the next sheet."
        )
    times = (
        "Times are UTC (ISO 8601)"
        if selection.time_zone == "UTC"
        else f"Times are in {selection.time_zone} (ISO 8601 with the offset)"
    )
    return (
        f"The file is CSV (comma separated, UTF-8, RFC 4180). {times}; "
        "prices are decimal numbers with their currency in the next column."
    )


@dataclass(frozen=True, slots=True)
class FileContents:
    """Facts (label, value) to list, a note on reading the format, and whether the file
    starts with a header row (CSV and xlsx do; JSON Lines and Parquet name each value)."""

    facts: tuple[tuple[str, str], ...]
    note: str
    header_row: bool


def describe(fmt: ExportFormat, selection: ExportSelection) -> FileContents:
    facts = [("Format", _FORMAT_NAMES[fmt])]
    if selection.columns != COLUMNS:
        facts.append(("Columns", ", ".join(selection.columns)))
    filters = selection.filters()
    if filters:
        parts = []
        if "status" in filters:
            parts.append("status " + " or ".join(filters["status"]))
        if "plan" in filters:
            parts.append(f"plan {filters['plan']}")
        if "started_between" in filters:
            between = filters["started_between"]
            parts.append(f"started {between['from']} to {between['to']}")
        if "updated_since" in filters:
            parts.append(f"updated since {filters['updated_since']}")
        facts.append(("Only", "; ".join(parts)))
    if selection.time_zone != "UTC":
        facts.append(("Time zone", selection.time_zone))
    return FileContents(
        facts=tuple(facts),
        note=_note(fmt, selection),
        header_row=fmt in (ExportFormat.CSV, ExportFormat.CSV_GZ, ExportFormat.XLSX),
    )
