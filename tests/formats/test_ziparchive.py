"""The streamed zip archive, read back with Python's zipfile (CRCs checked)."""

from __future__ import annotations

import io
import zipfile

import pytest

from exporter.formats.base import HashingSink
from exporter.formats.ziparchive import ArchiveTooLarge, ZipArchive


def test_entries_written_in_pieces_read_back_deflated_with_their_crcs() -> None:
    out = io.BytesIO()
    archive = ZipArchive(HashingSink(out))  # not seekable: nothing is sought back
    archive.open("xl/worksheets/sheet1.xml")
    for piece in (b"<row>", b"x" * 100_000, b"</row>\n", b""):
        archive.write(piece)
    archive.close_entry()
    archive.add("[Content_Types].xml", "<Types/> é".encode())
    archive.add("empty", b"")
    archive.close()

    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as read:
        assert read.testzip() is None
        assert read.namelist() == ["xl/worksheets/sheet1.xml", "[Content_Types].xml", "empty"]
        assert read.read("xl/worksheets/sheet1.xml") == b"<row>" + b"x" * 100_000 + b"</row>\n"
        assert read.read("[Content_Types].xml") == "<Types/> é".encode()
        assert read.read("empty") == b""
        assert {i.compress_type for i in read.infolist()} == {zipfile.ZIP_DEFLATED}
        assert read.getinfo("xl/worksheets/sheet1.xml").compress_size < 1_000


def test_an_entry_past_zips_32_bit_sizes_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # zipfile's own limit (4 GiB without Zip64), made small.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1_000)
    archive = ZipArchive(HashingSink(io.BytesIO()))
    archive.open("big")
    archive.write(b"x" * 1_001)
    with pytest.raises(ArchiveTooLarge):
        archive.close_entry()
