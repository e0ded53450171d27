"""The interface every export format implements, and the byte sink typed writers write to."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from exporter.models import ExportFormat
from exporter.selection import ExportSelection
from exporter.store.memberships import Rendering

if TYPE_CHECKING:
    import pyarrow as pa


class TableWriter(Protocol):
    """Writes typed blocks of rows (Arrow record batches, in file order) to a file."""

    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None:
        """Finish the file (footer, zip directory). Called once, after the last batch."""


# (where the bytes go, what the export holds, a directory for scratch files) -> a writer
OpenWriter = Callable[["HashingSink", ExportSelection, Path | None], TableWriter]


class RowStream(Protocol):
    """Wraps rows PostgreSQL rendered (COPY's bytes, one row per line) into a file."""

    def write(self, chunk: bytes) -> None: ...

    def close(self) -> None:
        """Finish the file. Called once, after the last chunk."""


# (where the bytes go, what the export holds, the longest text of each free-text column in
# the first rows: ``store/memberships.text_lengths``) -> a stream
OpenStream = Callable[["HashingSink", ExportSelection, Mapping[str, int]], RowStream]


@dataclass(frozen=True, slots=True)
class FileFormat:
    """What ``jobs/produce.py`` needs to know about a format.

    ``render`` is how PostgreSQL sends the rows (``store/memberships.Rendering``): ``csv``
    and ``json`` are the file's bytes already (streamed straight to the file); ``xlsx``
    rows are streamed into ``open_stream``'s ``RowStream`` (the workbook around them);
    ``typed`` rows are read back in blocks and written by ``open_writer``'s ``TableWriter``.
    """

    fmt: ExportFormat
    render: Rendering
    open_writer: OpenWriter | None = None
    open_stream: OpenStream | None = None

    @property
    def extension(self) -> str:
        return self.fmt.value

    @property
    def content_type(self) -> tuple[str, str]:
        return self.fmt.content_type


class HashingSink:
    """A write-only binary file over ``out`` that counts and hashes what passes through.

    It has no ``seek``: xlsx's archive is written front to back anyway, and
    pyarrow writes Parquet front to back, so every byte is hashed exactly once.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self._out.write(view)
        self._digest.update(view)
        self.bytes += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._out.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def sha256(self) -> str:
        return self._digest.hexdigest()
