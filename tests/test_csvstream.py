"""Unit tests for exporter.csvstream: the formula rule, the BOM, gzip and byte counting.

The CSV text itself is rendered by PostgreSQL (store/memberships.py); its quoting, line
ends and value formats are covered by the store and job tests against a real database.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import zlib

import pytest

from exporter.csvstream import (
    FORMULA_TRIGGERS,
    GZIP_LEVEL,
    GZIP_WBITS,
    UTF8_BOM,
    EncodedSize,
    ExportEncoder,
    neutralise_formula,
)
from exporter.models import ExportFormat

CSV_TEXT = (
    'membership_id,organization_name,price\n1,"Acme, Inc.",9.90\n2,"Say ""hi""",-3.50\n'
    "3,Zoë Ångström 日本語 🎉,0.10\n"
).encode()


def _encode_all(encoder: ExportEncoder, chunks: list[bytes]) -> bytes:
    return b"".join(encoder.encode(c) for c in chunks) + encoder.finish()


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- formula neutralisation -----------------------------------------------------------------


def test_formula_triggers_are_the_owasp_set() -> None:
    assert set(FORMULA_TRIGGERS) == {"=", "+", "-", "@", "\t", "\r", "\n"}


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r", "\n"])
def test_text_starting_with_a_formula_trigger_gets_an_apostrophe(trigger: str) -> None:
    text = f'{trigger}HYPERLINK("http://evil.example","click")'

    assert neutralise_formula(text) == "'" + text


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r", "\n"])
def test_a_lone_trigger_character_is_neutralised(trigger: str) -> None:
    assert neutralise_formula(trigger) == "'" + trigger


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "a=b",
        "1+1",
        "me@example.com",
        " =1+1",
        "x\n=y",
        "'=already neutralised",
        "Zoë",
    ],
)
def test_text_not_starting_with_a_trigger_is_unchanged(text: str) -> None:
    assert neutralise_formula(text) == text


@pytest.mark.parametrize(
    "payload",
    ["=cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)"],
)
def test_neutralising_is_idempotent(payload: str) -> None:
    once = neutralise_formula(payload)

    assert once == "'" + payload
    assert neutralise_formula(once) == once


# --- BOM ------------------------------------------------------------------------------------


def test_utf8_bom_constant_is_the_utf8_bom() -> None:
    assert UTF8_BOM == codecs.BOM_UTF8 == "\ufeff".encode()


def test_plain_csv_passes_through_unchanged() -> None:
    encoder = ExportEncoder(ExportFormat.CSV)
    chunks = _split(CSV_TEXT, 7)

    out = [encoder.encode(c) for c in chunks]

    assert out == chunks
    assert encoder.finish() == b""


def test_no_bom_by_default() -> None:
    data = _encode_all(ExportEncoder(ExportFormat.CSV), [CSV_TEXT])

    assert data == CSV_TEXT
    assert not data.startswith(codecs.BOM_UTF8)


def test_bom_is_written_once_before_the_first_chunk() -> None:
    encoder = ExportEncoder(ExportFormat.CSV, bom=True)
    chunks = _split(CSV_TEXT, 10)

    out = [encoder.encode(c) for c in chunks]
    data = b"".join(out) + encoder.finish()

    assert out[0] == UTF8_BOM + chunks[0]
    assert out[1:] == chunks[1:]
    assert data == UTF8_BOM + CSV_TEXT
    assert data.count(UTF8_BOM) == 1
    assert data.decode("utf-8-sig") == CSV_TEXT.decode()


def test_bom_goes_out_even_when_the_first_chunk_is_empty() -> None:
    encoder = ExportEncoder(ExportFormat.CSV, bom=True)

    data = _encode_all(encoder, [b"", CSV_TEXT])

    assert data == UTF8_BOM + CSV_TEXT


def test_empty_export_with_bom_is_the_bom_alone() -> None:
    encoder = ExportEncoder(ExportFormat.CSV, bom=True)

    assert encoder.finish() == UTF8_BOM
    assert encoder.size() == EncodedSize(csv_bytes=3, file_bytes=3)


def test_empty_export_without_bom_is_empty() -> None:
    encoder = ExportEncoder(ExportFormat.CSV)

    assert encoder.finish() == b""
    assert encoder.size() == EncodedSize(csv_bytes=0, file_bytes=0)


# --- gzip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100_000])
def test_gzip_output_decompresses_to_the_csv(chunk_size: int) -> None:
    encoder = ExportEncoder(ExportFormat.CSV_GZ)

    data = _encode_all(encoder, _split(CSV_TEXT, chunk_size))

    assert data[:2] == b"\x1f\x8b"  # gzip magic: any gunzip reads it
    assert gzip.decompress(data) == CSV_TEXT


def test_gzip_with_bom_puts_the_bom_inside_the_compressed_stream() -> None:
    encoder = ExportEncoder(ExportFormat.CSV_GZ, bom=True)

    data = _encode_all(encoder, _split(CSV_TEXT, 16))

    assert not data.startswith(UTF8_BOM)
    assert gzip.decompress(data) == UTF8_BOM + CSV_TEXT


def test_empty_gzip_export_is_a_valid_empty_gzip_file() -> None:
    encoder = ExportEncoder(ExportFormat.CSV_GZ)

    data = encoder.finish()

    assert gzip.decompress(data) == b""
    assert encoder.size() == EncodedSize(csv_bytes=0, file_bytes=len(data))


def test_empty_gzip_export_with_bom_holds_only_the_bom() -> None:
    encoder = ExportEncoder(ExportFormat.CSV_GZ, bom=True)

    data = encoder.finish()

    assert gzip.decompress(data) == UTF8_BOM
    assert encoder.size() == EncodedSize(csv_bytes=3, file_bytes=len(data))


def test_gzip_is_readable_by_stdlib_zlib_streaming() -> None:
    data = _encode_all(ExportEncoder(ExportFormat.CSV_GZ), _split(CSV_TEXT * 50, 333))
    decompressor = zlib.decompressobj(GZIP_WBITS)

    assert decompressor.decompress(data) + decompressor.flush() == CSV_TEXT * 50
    assert decompressor.eof
    assert decompressor.unused_data == b""


def test_gzip_shrinks_repetitive_csv() -> None:
    csv = b"".join(b"%d,Acme Corporation,gold,active,member,9.90,EUR\n" % i for i in range(5000))

    data = _encode_all(ExportEncoder(ExportFormat.CSV_GZ), _split(csv, 4096))

    assert gzip.decompress(data) == csv
    assert len(data) < len(csv) // 4


def test_gzip_settings() -> None:
    assert GZIP_WBITS == 16 + 15  # gzip framing, 32 KiB window
    assert 1 <= GZIP_LEVEL <= 3  # ISA-L's levels


def test_chunks_split_inside_a_multibyte_character_still_round_trip() -> None:
    text = "日本語🎉".encode() * 10

    data = _encode_all(ExportEncoder(ExportFormat.CSV_GZ), _split(text, 1))

    assert gzip.decompress(data).decode() == "日本語🎉" * 10


# --- counting -------------------------------------------------------------------------------


@pytest.mark.parametrize("bom", [False, True])
def test_plain_csv_counts_csv_and_file_bytes_alike(bom: bool) -> None:
    encoder = ExportEncoder(ExportFormat.CSV, bom=bom)

    data = _encode_all(encoder, _split(CSV_TEXT, 5))

    expected = len(CSV_TEXT) + (3 if bom else 0)
    assert len(data) == expected
    assert encoder.csv_bytes == encoder.file_bytes == expected
    assert encoder.size() == EncodedSize(csv_bytes=expected, file_bytes=expected)


@pytest.mark.parametrize("bom", [False, True])
def test_gzip_counts_uncompressed_csv_and_compressed_file_bytes(bom: bool) -> None:
    encoder = ExportEncoder(ExportFormat.CSV_GZ, bom=bom)

    data = _encode_all(encoder, _split(CSV_TEXT * 20, 50))

    assert encoder.csv_bytes == len(CSV_TEXT * 20) + (3 if bom else 0)
    assert encoder.file_bytes == len(data)
    assert encoder.size() == EncodedSize(csv_bytes=encoder.csv_bytes, file_bytes=len(data))


def test_counts_grow_as_chunks_are_encoded() -> None:
    encoder = ExportEncoder(ExportFormat.CSV)

    encoder.encode(b"a,b\n")
    assert encoder.size() == EncodedSize(4, 4)
    encoder.encode(b"1,2\n")
    assert encoder.size() == EncodedSize(8, 8)


def test_size_is_a_snapshot() -> None:
    encoder = ExportEncoder(ExportFormat.CSV)
    before = encoder.size()

    encoder.encode(b"x\n")

    assert before == EncodedSize(0, 0)
    assert encoder.size() == EncodedSize(2, 2)


@pytest.mark.parametrize("fmt", list(ExportFormat))
@pytest.mark.parametrize("bom", [False, True])
def test_sha256_is_of_the_file_exactly_as_written(fmt: ExportFormat, bom: bool) -> None:
    encoder = ExportEncoder(fmt, bom=bom)
    chunks = [b"a,b\n", b"", 'é,"x"\n'.encode(), b"1,2\n" * 1000]
    written = b"".join(encoder.encode(c) for c in chunks) + encoder.finish()

    assert encoder.sha256() == hashlib.sha256(written).hexdigest()
    assert encoder.file_bytes == len(written)
