"""An SMTP sink in a process of its own, for ``make bench-rush``: its CPU is its own in the
report (not the load generator's), and every message it accepts becomes one JSON line
``{"t": arrival (epoch s), "export_id": …, "kind": …}`` in ``--out`` (flushed per message),
so the benchmark times each e-mail's arrival and counts deliveries per export.

    python -m bench.smtp_sink --port 2525 --out var/bench/rush-mail.jsonl

Runs until SIGTERM or SIGINT; loopback only.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO, Any

from aiosmtpd.controller import Controller

from exporter.mail.messages import EXPORT_ID_HEADER, KIND_HEADER


class TimestampingHandler:
    """Writes when each message came and which export (and kind of mail) it carries."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._headers = BytesHeaderParser(policy=policy.default)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        now = time.time()
        content: bytes = envelope.original_content or envelope.content
        headers = self._headers.parsebytes(content)
        line = json.dumps(
            {
                "t": now,
                "export_id": str(headers[EXPORT_ID_HEADER] or ""),
                "kind": str(headers[KIND_HEADER] or ""),
                "bytes": len(content),
            }
        )
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open(args.out, "a", encoding="utf-8") as out:
        # Large exports' messages are links; attachments stay under 10 MiB.
        controller = Controller(
            TimestampingHandler(out),
            hostname="127.0.0.1",
            port=args.port,
            data_size_limit=64 * 1024 * 1024,
        )
        controller.start()
        try:
            stop.wait()
        finally:
            controller.stop()


if __name__ == "__main__":
    main()
