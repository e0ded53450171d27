"""An SMTP sink on loopback: every message it accepts becomes a ``.eml`` file in a folder."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from exporter.dev.ports import free_port
from exporter.mail.messages import EXPORT_ID_HEADER


class OutboxHandler:
    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        outbox.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.outbox / f".{name}.tmp"
        tmp.write_bytes(envelope.original_content or envelope.content)
        os.replace(tmp, self.outbox / name)  # readers never see half a message
        return "250 Message accepted for delivery"


@dataclass
class SmtpSink:
    host: str
    port: int
    outbox: Path
    controller: Controller

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[EmailMessage]:
        """Every message received so far, oldest first."""
        return [message for _, message in read_outbox(self.outbox)]

    def for_export(self, export_id: str) -> list[EmailMessage]:
        """The messages that carry one export."""
        return [m for m in self.messages() if m[EXPORT_ID_HEADER] == export_id]


def read_outbox(outbox: Path) -> list[tuple[Path, EmailMessage]]:
    """Every stored message with its file, oldest first."""
    found = []
    for path in sorted(outbox.glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        found.append((path, message))
    return found


def start_smtp_sink(outbox: Path, port: int | None = None) -> SmtpSink:
    port = port or free_port()
    controller = Controller(OutboxHandler(outbox), hostname="127.0.0.1", port=port)
    controller.start()
    return SmtpSink(host="127.0.0.1", port=port, outbox=outbox, controller=controller)
