"""Which ``FileFormat`` each ``ExportFormat`` is. Writers are imported only when an export of
theirs runs (pyarrow alone is tens of MB; see docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from exporter.formats.base import FileFormat, HashingSink, RowStream, TableWriter
from exporter.models import ExportFormat
from exporter.selection import ExportSelection


def _parquet(out: HashingSink, selection: ExportSelection, temp_dir: Path | None) -> TableWriter:
    from exporter.formats.parquet import ParquetWriter

    return ParquetWriter(out, selection)


def _xlsx(
    out: HashingSink, selection: ExportSelection, text_lengths: Mapping[str, int]
) -> RowStream:
    from exporter.formats.xlsx import XlsxStream

    return XlsxStream(out, selection, text_lengths)


_FORMATS: dict[ExportFormat, FileFormat] = {
    ExportFormat.CSV: FileFormat(ExportFormat.CSV, "csv"),
    ExportFormat.CSV_GZ: FileFormat(ExportFormat.CSV_GZ, "csv"),
    ExportFormat.JSONL: FileFormat(ExportFormat.JSONL, "json"),
    ExportFormat.PARQUET: FileFormat(ExportFormat.PARQUET, "typed", _parquet),
    ExportFormat.XLSX: FileFormat(ExportFormat.XLSX, "xlsx", open_stream=_xlsx),
}


def spec_for(fmt: ExportFormat) -> FileFormat:
    return _FORMATS[fmt]
