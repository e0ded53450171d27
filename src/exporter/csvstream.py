"""CSV bytes on their way to the file: BOM, compression, counting. Pure: no I/O.

The CSV text itself is rendered by PostgreSQL (see ``store/memberships.py``): RFC 4180
quoting (fields quoted only when they hold a comma, quote or line break; quotes doubled),
LF line ends, UTF-8, header row first. This module owns the rules that SQL implements
(``FORMULA_TRIGGERS``) and what happens to the bytes afterwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from isal import isal_zlib

from exporter.models import ExportFormat

# A text cell starting with one of these is run as a formula by spreadsheets (OWASP
# "CSV injection"); such cells get a leading apostrophe.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")
UTF8_BOM = b"\xef\xbb\xbf"
# ISA-L's level 2 compresses CSV about as well as zlib -6 at several times the speed
# (docs/benchmarks.md); gzip framing (wbits 16+15) so any gunzip reads it.
GZIP_LEVEL = 2
GZIP_WBITS = 31


def neutralise_formula(text: str) -> str:
    """The rule ``safe_text`` applies in SQL, for documentation and tests."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self, mode: int = ..., /) -> bytes: ...


@dataclass
class EncodedSize:
    csv_bytes: int
    file_bytes: int


class ExportEncoder:
    """Turns CSV chunks into file chunks: an optional BOM, then optional gzip."""

    def __init__(self, fmt: ExportFormat, *, bom: bool = False) -> None:
        self._compressor: _Compressor | None = (
            isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)
            if fmt is ExportFormat.CSV_GZ
            else None
        )
        self._pending_bom = bom
        self.csv_bytes = 0
        self.file_bytes = 0
        # The file's SHA-256, computed on the bytes as they are written (no second pass):
        # the manifest's checksum, which the owner can check with sha256sum.
        self._digest = hashlib.sha256()

    def encode(self, chunk: bytes) -> bytes:
        if self._pending_bom:
            chunk = UTF8_BOM + chunk
            self._pending_bom = False
        self.csv_bytes += len(chunk)
        out = self._compressor.compress(chunk) if self._compressor else chunk
        self.file_bytes += len(out)
        self._digest.update(out)
        return out

    def finish(self) -> bytes:
        out = self.encode(b"") if self._pending_bom else b""
        if self._compressor is not None:
            tail = self._compressor.flush()
            self.file_bytes += len(tail)
            self._digest.update(tail)
            out += tail
        return out

    def sha256(self) -> str:
        """Hex SHA-256 of every byte returned so far (the whole file after ``finish``)."""
        return self._digest.hexdigest()

    def size(self) -> EncodedSize:
        return EncodedSize(self.csv_bytes, self.file_bytes)
