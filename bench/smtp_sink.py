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
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO

from exporter.mail.messages import EXPORT_ID_HEADER, KIND_HEADER

# Large exports' messages are links; attachments stay under 10 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
END_OF_DATA = b"\r\n.\r\n"
_HEADERS = BytesHeaderParser(policy=policy.default)


def message_headers(data: bytes) -> Message:
    """The header block of a message as it came over the wire (the body is not parsed)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    return _HEADERS.parsebytes(head + b"\r\n\r\n")


def json_line_writer(out: IO[str]) -> Callable[[bytes], None]:
    """``on_message`` for the command line: one JSON line per message received now, its
    export id and kind (from the headers) and its size on the wire."""

    def write(data: bytes) -> None:
        now = time.time()
        headers = message_headers(data)
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

    return write


async def session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    on_message: Callable[[bytes], None],
) -> None:
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
                on_message(data[: -len(END_OF_DATA) + 2])
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


async def serve(
    port: int, on_message: Callable[[bytes], None], *, ready: Callable[[int], None] | None = None
) -> None:
    """Accept connections on ``port`` (0: any free one, passed to ``ready``) until SIGTERM,
    SIGINT or cancellation; ``on_message`` gets each message's DATA (dot-stuffed)."""
    server = await asyncio.start_server(
        lambda r, w: session(r, w, on_message), "127.0.0.1", port, limit=MAX_MESSAGE_BYTES
    )
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


class SinkThread:
    """The sink on a thread of its own (its own event loop), for a benchmark that wants
    the messages in its own process: ``with SinkThread(on_message) as port: ...``."""

    def __init__(self, on_message: Callable[[bytes], None]) -> None:
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smtp-sink", daemon=True)
        self.port = 0

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()

            def ready(port: int) -> None:
                self.port = port
                self._started.set()

            with contextlib.suppress(asyncio.CancelledError):
                await serve(0, self._on_message, ready=ready)

        asyncio.run(main())

    def __enter__(self) -> int:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the SMTP sink did not start")
        return self.port

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with open(args.out, "a", encoding="utf-8") as out:
        asyncio.run(_serve_until_signal(args.port, json_line_writer(out)))


async def _serve_until_signal(port: int, on_message: Callable[[bytes], None]) -> None:
    serving = asyncio.create_task(serve(port, on_message))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving


if __name__ == "__main__":
    main()
