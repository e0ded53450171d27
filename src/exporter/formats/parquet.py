"""Parquet: typed columns, zstd, one row group per block of rows as they stream.

Readable by pandas, polars, DuckDB and Spark: strings (UUIDs as canonical text), dates
(``date32``), timestamps with the export's time zone (microseconds, UTC-normalised as
Parquet stores them, the zone in the schema), price as ``decimal(12, 2)``, booleans.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from exporter.formats.arrow import schema_of
from exporter.formats.base import HashingSink
from exporter.selection import ExportSelection

# zstd level 3 (its default): most of the size win at little CPU.
COMPRESSION: Literal["zstd"] = "zstd"


class ParquetWriter:
    """A ``TableWriter`` for Parquet."""

    def __init__(self, out: HashingSink, selection: ExportSelection) -> None:
        self._writer = pq.ParquetWriter(
            out,  # type: ignore[arg-type]  # any object with write(); pyarrow wraps it
            schema_of(selection),
            compression=COMPRESSION,
            write_statistics=True,
        )

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()
