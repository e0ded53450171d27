"""Rows to CSV bytes in bounded chunks. Pure: no I/O, so it is cheap to test exhaustively.

Output is RFC 4180: comma separated, CRLF line ends, fields quoted only when they hold a
comma, quote or line break, quotes doubled. Text is UTF-8 (optionally with a BOM so Excel
detects the encoding). Values are rendered so a spreadsheet reads them back unchanged:

- ``datetime`` → ISO 8601 in UTC with a ``Z`` suffix (naive values are taken as UTC)
- ``date`` → ``YYYY-MM-DD``; ``Decimal`` → its exact decimal string; ``bool`` → true/false
- ``None`` → empty field; ``UUID`` → canonical string
- text that a spreadsheet would run as a formula (starts with ``= + - @``, tab, CR or LF)
  is prefixed with ``'`` (OWASP CSV injection guidance).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")
UTF8_BOM = "\ufeff"


def neutralise_formula(text: str) -> str:
    """Make text that a spreadsheet would evaluate read as a literal string."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def render_cell(value: object) -> str:
    """One value as CSV text (before quoting)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return neutralise_formula(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (int, float, uuid.UUID)):
        return str(value)
    return neutralise_formula(str(value))


class CsvChunker:
    """Accumulates CSV text and hands it out as UTF-8 chunks of about ``chunk_bytes``.

    Memory use is bounded by one chunk plus one batch of rows, whatever the export size.
    """

    def __init__(
        self,
        header: Sequence[str],
        *,
        chunk_bytes: int = 64 * 1024,
        bom: bool = False,
    ) -> None:
        self._chunk_bytes = chunk_bytes
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")
        self.rows_written = 0
        self.bytes_emitted = 0
        if bom:
            self._buffer.write(UTF8_BOM)
        self._writer.writerow(header)

    def write_rows(self, rows: Iterable[Sequence[object]]) -> Iterator[bytes]:
        """Add rows; yield a chunk each time the buffer reaches the chunk size."""
        for row in rows:
            self._writer.writerow([render_cell(v) for v in row])
            self.rows_written += 1
            # tell() counts characters, a cheap lower bound of the encoded size
            if self._buffer.tell() >= self._chunk_bytes:
                yield self._take()

    def flush(self) -> bytes:
        """Whatever is buffered; call once after the last rows."""
        return self._take()

    def _take(self) -> bytes:
        data = self._buffer.getvalue().encode("utf-8")
        self._buffer.seek(0)
        self._buffer.truncate()
        self.bytes_emitted += len(data)
        return data
