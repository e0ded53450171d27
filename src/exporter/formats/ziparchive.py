"""A zip archive written front to back, one deflated entry at a time (what an xlsx is), on
Python's ``zipfile``.

The output is a stream that cannot seek (the file is hashed as it is written), so
``zipfile`` puts each entry's sizes and CRC in a data descriptor after its data. Deflate
level 1: the sheet's XML is compressed on the worker's core while PostgreSQL renders the
next rows on its own, and level 1 keeps the worker well ahead of it (docs/benchmarks.md).
No Zip64: an entry or the archive past 4 GiB raises ``ArchiveTooLarge`` rather than write a
file some readers would refuse.
"""

from __future__ import annotations

import zipfile
from typing import IO, Protocol

DEFLATE_LEVEL = 1
# Every entry gets the same time (zip's first day), so the same rows make the same file.
_EPOCH = (1980, 1, 1, 0, 0, 0)


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class ArchiveTooLarge(Exception):
    """An entry or the archive would need Zip64 (past 4 GiB)."""


class _Unseekable:
    """The sink as ``zipfile`` wants a stream it cannot seek: ``write`` and ``flush`` only
    (``zipfile`` keeps the offsets itself)."""

    def __init__(self, out: _Sink) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        pass


class ZipArchive:
    """``open(name)``, ``write`` its bytes, ``close_entry()``; repeat; then ``close()``."""

    def __init__(self, out: _Sink) -> None:
        self._zip = zipfile.ZipFile(
            _Unseekable(out),  # type: ignore[call-overload]  # zipfile needs write/flush only
            "w",
            compression=zipfile.ZIP_DEFLATED,
            compresslevel=DEFLATE_LEVEL,
            allowZip64=False,
        )
        self._entry: IO[bytes] | None = None
        self._name = ""

    def open(self, name: str) -> None:
        assert self._entry is None, "close_entry() first"
        info = zipfile.ZipInfo(name, date_time=_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        self._name = name
        self._entry = self._zip.open(info, "w")

    def write(self, data: bytes) -> None:
        assert self._entry is not None, "open() first"
        try:
            self._entry.write(data)
        except RuntimeError as exc:  # zipfile: "File size too large, try using force_zip64"
            raise ArchiveTooLarge(self._name) from exc

    def close_entry(self) -> None:
        assert self._entry is not None, "open() first"
        entry, self._entry = self._entry, None
        try:
            entry.close()
        except (RuntimeError, zipfile.LargeZipFile) as exc:
            raise ArchiveTooLarge(self._name) from exc

    def add(self, name: str, data: bytes) -> None:
        """A whole entry at once."""
        self.open(name)
        self.write(data)
        self.close_entry()

    def close(self) -> None:
        """Write the central directory and its end record."""
        assert self._entry is None, "close_entry() first"
        try:
            self._zip.close()
        except zipfile.LargeZipFile as exc:
            raise ArchiveTooLarge("central directory") from exc
