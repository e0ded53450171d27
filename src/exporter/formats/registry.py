"""Which ``FileFormat`` each ``ExportFormat`` is. Writers with heavy libraries are imported
only when an export of theirs runs (pyarrow alone is tens of MB; see docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from exporter.formats.base import FileFormat, HashingSink, TableWriter
from exporter.models import ExportFormat
from exporter.selection import ExportSelection


def _parquet(out: HashingSink, selection: ExportSelection, temp_dir: Path | None) -> TableWriter:
    from exporter.formats.parquet import ParquetWriter

    return ParquetWriter(out, selection)


def _xlsx(out: HashingSink, selection: ExportSelection, temp_dir: Path | None) -> TableWriter:
    from exporter.formats.xlsx import XlsxWriter

    return XlsxWriter(out, selection, temp_dir=temp_dir)


_FORMATS: dict[ExportFormat, FileFormat] = {
    ExportFormat.CSV: FileFormat(ExportFormat.CSV, "csv"),
    ExportFormat.CSV_GZ: FileFormat(ExportFormat.CSV_GZ, "csv"),
    ExportFormat.JSONL: FileFormat(ExportFormat.JSONL, "json"),
    ExportFormat.PARQUET: FileFormat(ExportFormat.PARQUET, "typed", _parquet),
    ExportFormat.XLSX: FileFormat(ExportFormat.XLSX, "typed", _xlsx),
}


def spec_for(fmt: ExportFormat) -> FileFormat:
    return _FORMATS[fmt]
