"""An SMTP sink in a process of its own, for ``make bench-rush``: its CPU is its own in the
report (not the load generator's), and every message it accepts becomes one JSON line
``{"t": arrival (epoch s), "export_id": …, "kind": …, "bytes": …}`` in ``--out`` (flushed
per message), so the benchmark times each e-mail's arrival and counts deliveries per export.

    python -m bench.smtp_sink --port 2525 --out var/bench/rush-mail.jsonl

It stands in for Amazon SES, whose CPU is not on our bill, so it should cost as little as a
real mail server's front end: it speaks SMTP (RFC 5321: EHLO/HELO, MAIL, RCPT, DATA, RSET,
NOOP, QUIT; SIZE, 8BITMIME, SMTPUTF8 and PIPELINING advertised) over asyncio streams and
reads a message's DATA in one piece up to the ``<CRLF>.<CRLF>`` that ends it, where
aiosmtpd (the test suite's sink, ``exporter.dev.smtp``) reads it line by line in Python:
~12 ms of CPU for a 1,000-row export's e-mail (~3,500 lines), more than the worker spent
composing it (docs/benchmarks.md). Only the header block is parsed.

Runs until SIGTERM or SIGINT; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO

from exporter.mail.messages import EXPORT_ID_HEADER, KIND_HEADER

# Large exports' messages are links; attachments stay under 10 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
END_OF_DATA = b"\r\n.\r\n"
_HEADERS = BytesHeaderParser(policy=policy.default)


def record(out: IO[str], data: bytes) -> None:
    """One JSON line for a message received now: its export id and kind (from the headers
    only) and its size as it came over the wire."""
    now = time.time()
    head, _, _ = data.partition(b"\r\n\r\n")
    headers = _HEADERS.parsebytes(head + b"\r\n\r\n")
    line = json.dumps(
        {
            "t": now,
            "export_id": str(headers[EXPORT_ID_HEADER] or ""),
            "kind": str(headers[KIND_HEADER] or ""),
            "bytes": len(data),
        }
    )
    out.write(line + "\n")
    out.flush()


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: IO[str]) -> None:
    """One client's connection, any number of messages, until QUIT or the client goes."""

    def reply(text: str) -> None:
        writer.write(text.encode() + b"\r\n")

    reply("220 127.0.0.1 bench sink")
    mail_from = False
    recipients = 0
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            verb = line[:4].upper()
            if verb == b"EHLO":
                reply(f"250-127.0.0.1\r\n250-SIZE {MAX_MESSAGE_BYTES}")
                reply("250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING")
            elif verb == b"HELO":
                reply("250 127.0.0.1")
            elif verb == b"MAIL":
                mail_from, recipients = True, 0
                reply("250 OK")
            elif verb == b"RCPT":
                if not mail_from:
                    reply("503 need MAIL first")
                    continue
                recipients += 1
                reply("250 OK")
            elif verb == b"DATA":
                if not recipients:
                    reply("503 need RCPT first")
                    continue
                reply("354 End data with <CR><LF>.<CR><LF>")
                await writer.drain()
                # The terminator's leading CRLF ends the message's last line.
                data = await reader.readuntil(END_OF_DATA)
                record(out, data[: -len(END_OF_DATA) + 2])
                mail_from, recipients = False, 0
                reply("250 OK")
            elif verb == b"RSET":
                mail_from, recipients = False, 0
                reply("250 OK")
            elif verb == b"NOOP":
                reply("250 OK")
            elif verb == b"QUIT":
                reply("221 Bye")
                await writer.drain()
                break
            else:
                reply("500 command not recognized")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client went away (or sent more than any message may be)
    finally:
        writer.close()


async def serve(port: int, out: IO[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(
        lambda r, w: session(r, w, out), "127.0.0.1", port, limit=MAX_MESSAGE_BYTES
    )
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with open(args.out, "a", encoding="utf-8") as out:
        asyncio.run(serve(args.port, out))


if __name__ == "__main__":
    main()
