"""A worker's kept SMTP connection (mail/smtp.py, ``keep_connection``): reused for every
message, checked with NOOP after it was idle, opened again when the relay dropped it or was
away, against real aiosmtpd servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from exporter.config import SmtpSettings
from exporter.dev.ports import free_port
from exporter.dev.smtp import OutboxHandler
from exporter.errors import MailError
from exporter.mail.smtp import IDLE_CHECK_S, Mailer
from exporter.metrics import sample_value
from tests.mail.test_messages import message

OPENED = "exporter_smtp_connections_opened_total"


class CountingHandler(OutboxHandler):
    """The outbox, counting the sessions (connections) and NOOPs the server saw."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.sessions: set[int] = set()
        self.noops = 0

    async def handle_EHLO(  # noqa: N802
        self, server: object, session: Any, envelope: object, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions.add(id(session))
        session.host_name = hostname  # as aiosmtpd's EHLO does when no hook is set
        return responses

    async def handle_NOOP(  # noqa: N802
        self, server: object, session: object, envelope: object, arg: str
    ) -> str:
        self.noops += 1
        return "250 OK"


def _emails(folder: Path) -> int:
    return len(list(folder.glob("*.eml")))


def _server(handler: CountingHandler, port: int) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_one_connection_carries_every_message_and_an_idle_one_is_checked(
    tmp_path: Path,
) -> None:
    handler = CountingHandler(tmp_path)
    controller = _server(handler, free_port())
    clock = Clock()
    mailer = Mailer(
        SmtpSettings(host="127.0.0.1", port=controller.port), keep_connection=True, clock=clock
    )
    opened = sample_value(OPENED)
    try:
        for i in range(3):
            await mailer.send(message(f"kept-{i}@example.com"))
        assert handler.noops == 0  # in use: no check needed
        clock.now += IDLE_CHECK_S + 1
        await mailer.send(message("after-idle@example.com"))
    finally:
        await mailer.close()
        controller.stop()
    assert _emails(tmp_path) == 4
    assert len(handler.sessions) == 1
    assert handler.noops == 1
    assert sample_value(OPENED) - opened == 1


@pytest.mark.parametrize("idle", [False, True], ids=["in-use", "idle"])
async def test_a_dropped_connection_is_opened_again_without_losing_the_message(
    tmp_path: Path, idle: bool
) -> None:
    port = free_port()
    first = CountingHandler(tmp_path / "first")
    controller = _server(first, port)
    clock = Clock()
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=port), keep_connection=True, clock=clock)
    opened = sample_value(OPENED)
    try:
        await mailer.send(message("before@example.com"))
        controller.stop()  # the relay goes away, closing the kept connection
        second = CountingHandler(tmp_path / "second")
        controller = _server(second, port)
        if idle:
            clock.now += IDLE_CHECK_S + 1  # found dead by the NOOP check
        await mailer.send(message("after@example.com"))
    finally:
        await mailer.close()
        controller.stop()
    assert _emails(tmp_path / "second") == 1
    assert len(second.sessions) == 1
    assert sample_value(OPENED) - opened == 2


async def test_an_outage_is_transient_and_the_next_send_reconnects(tmp_path: Path) -> None:
    port = free_port()
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=port, timeout_s=2), keep_connection=True)
    try:
        with pytest.raises(MailError) as caught:
            await mailer.send(message("down@example.com"))
        assert caught.value.transient and caught.value.code == "smtp_unavailable"
        handler = CountingHandler(tmp_path)
        controller = _server(handler, port)
        try:
            await mailer.send(message("back@example.com"))
        finally:
            await mailer.close()
            controller.stop()
    finally:
        await mailer.close()
    assert _emails(tmp_path) == 1
