"""The export's typed rows as Arrow record batches, read in blocks from COPY's typed CSV.

PostgreSQL sends the rows as CSV (``render="typed"`` in ``store/memberships.py``: exact
values, timestamps as UTC wall-clock text, NULL as an unquoted empty field, an empty string
as ``""``); pyarrow's C++ CSV reader parses them block by block into typed columns, so no
row is decoded in Python and memory stays at about one block. Parquet writes each batch as a
row group; xlsx walks each batch's values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import pyarrow as pa
import pyarrow.csv as pacsv

from exporter.selection import ExportSelection

# One block of CSV per batch (and per Parquet row group): ~10,000 rows of the full export,
# a few MB of Arrow memory; 4 MB blocks measured a higher peak RSS for no gain in speed.
BLOCK_BYTES = 2 << 20
# price is numeric(12, 2) (migration 0001).
PRICE_TYPE = pa.decimal128(12, 2)


def column_type(name: str, time_zone: str) -> pa.DataType:
    """The Arrow (and Parquet) type of a documented column."""
    if name in ("started_on", "ends_on"):
        return pa.date32()
    if name in ("created_at", "updated_at"):
        return pa.timestamp("us", tz=time_zone)
    if name == "auto_renew":
        return pa.bool_()
    if name == "price":
        return PRICE_TYPE
    # membership_id and organization_id are UUIDs, kept as their canonical text so every
    # tool shows them as written; the rest is text.
    return pa.string()


def schema_of(selection: ExportSelection) -> pa.Schema:
    fields = []
    for name in selection.columns:
        nullable = name == "ends_on"  # every other column is NOT NULL (migration 0001)
        fields.append(pa.field(name, column_type(name, selection.time_zone), nullable=nullable))
    return pa.schema(fields)


def _read_type(data_type: pa.DataType) -> pa.DataType:
    # Timestamps arrive as UTC wall-clock text: parse as naive, then mark the zone (a cast
    # from naive to zoned keeps the instant and reads it as UTC).
    return pa.timestamp("us") if pa.types.is_timestamp(data_type) else data_type


def typed_batches(raw: IO[bytes], selection: ExportSelection) -> Iterator[pa.RecordBatch]:
    """Batches of ``schema_of(selection)`` from COPY's typed CSV (with its header) in ``raw``."""
    schema = schema_of(selection)
    reader = pacsv.open_csv(
        raw,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={f.name: _read_type(f.type) for f in schema},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["true"],
            false_values=["false"],
            include_columns=list(selection.columns),
        ),
    )
    for batch in reader:
        if batch.num_rows == 0:
            continue
        columns = [
            column.cast(field.type) if pa.types.is_timestamp(field.type) else column
            for column, field in zip(batch.columns, schema, strict=True)
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)
