"""Mail over real SMTP servers: the local sink, an SES-like STARTTLS+AUTH relay, refusals."""

from __future__ import annotations

import asyncio
import datetime
import io
import os
import ssl
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from exporter.config import SmtpSettings
from exporter.dev.ports import free_port
from exporter.dev.smtp import OutboxHandler, SmtpSink
from exporter.errors import MailError
from exporter.mail.messages import (
    ExportAttachment,
    ExportEmail,
    build_export_message,
    build_failure_message,
)
from exporter.mail.smtp import Mailer
from tests.mail.test_messages import EXPORT_ID, message


async def test_sends_to_the_local_sink(smtp_sink: SmtpSink) -> None:
    mailer = Mailer(SmtpSettings(host=smtp_sink.host, port=smtp_sink.port))
    msg = message("sink-test@example.com")
    await mailer.send(msg)
    received = [m for m in smtp_sink.messages() if m["To"] == "sink-test@example.com"]
    assert len(received) == 1
    assert received[0]["Message-ID"] == msg["Message-ID"]


class RejectingHandler:
    def __init__(self, code: str) -> None:
        self.code = code

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        return self.code


@pytest.mark.parametrize(
    ("reply", "transient"),
    [("550 5.1.1 No such user", False), ("454 4.7.0 Throttling failure", True)],
)
async def test_refusals_are_classified_permanent_or_transient(reply: str, transient: bool) -> None:
    controller = Controller(RejectingHandler(reply), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        mailer = Mailer(SmtpSettings(host="127.0.0.1", port=controller.port))
        with pytest.raises(MailError) as caught:
            await mailer.send(message())
    finally:
        controller.stop()
    assert caught.value.transient is transient


async def test_unreachable_server_is_transient() -> None:
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=free_port(), timeout_s=2))
    with pytest.raises(MailError) as caught:
        await mailer.send(message())
    assert caught.value.transient
    assert caught.value.code == "smtp_unavailable"


@pytest.fixture(name="tls_files")
def _fix_tls_files(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(name="ses_like")
def _fix_ses_like(tls_files: tuple[Path, Path], tmp_path: Path) -> Iterator[Controller]:
    """Like Amazon SES on 587: STARTTLS required before AUTH, AUTH required before mail."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"AKIAEXAMPLE",
            b"ses-smtp-secret",
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

    controller = Controller(
        OutboxHandler(tmp_path / "ses-outbox"),
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    yield controller
    controller.stop()


def ses_settings(controller: Controller, ca: Path, **changes: Any) -> SmtpSettings:
    base = SmtpSettings(
        host="127.0.0.1",
        port=controller.port,
        start_tls=True,
        ca_file=ca,
        username=SecretStr("AKIAEXAMPLE"),
        password=SecretStr("ses-smtp-secret"),
        timeout_s=5,
    )
    return base.model_copy(update=changes)


async def test_starttls_and_auth_deliver_like_ses(
    ses_like: Controller, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    await Mailer(ses_settings(ses_like, tls_files[0])).send(message())
    assert len(list((tmp_path / "ses-outbox").glob("*.eml"))) == 1


async def test_wrong_smtp_password_is_a_permanent_failure(
    ses_like: Controller, tls_files: tuple[Path, Path]
) -> None:
    settings = ses_settings(ses_like, tls_files[0], password=SecretStr("wrong"))
    with pytest.raises(MailError) as caught:
        await Mailer(settings).send(message())
    assert not caught.value.transient


async def test_refusing_to_send_without_starttls(
    ses_like: Controller, tls_files: tuple[Path, Path]
) -> None:
    settings = ses_settings(ses_like, tls_files[0], start_tls=False)
    with pytest.raises(MailError):
        await Mailer(settings).send(message())


class EnvelopeHandler(OutboxHandler):
    """The sink, also keeping each envelope's MAIL options (where SIZE is declared)."""

    def __init__(self, outbox: Path) -> None:
        super().__init__(outbox)
        self.mail_options: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.mail_options.append(list(envelope.mail_options))
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(name="envelope_sink")
def _fix_envelope_sink(tmp_path: Path) -> Iterator[tuple[Controller, EnvelopeHandler]]:
    handler = EnvelopeHandler(tmp_path / "outbox")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, handler
    controller.stop()


def received(handler: EnvelopeHandler) -> list[tuple[bytes, EmailMessage]]:
    found = []
    for path in sorted(handler.outbox.glob("*.eml")):
        raw = path.read_bytes()
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        found.append((raw, message))
    return found


def export_message(content: bytes | io.BytesIO, size: int) -> ExportEmail:
    return build_export_message(
        sender="Exporter <exports@exporter.local>",
        recipient="user@example.com",
        export_id=EXPORT_ID,
        attachment=ExportAttachment(content, "memberships.csv", 1, size),
    )


async def test_an_attachment_read_from_a_file_arrives_as_if_it_were_in_memory(
    envelope_sink: tuple[Controller, EnvelopeHandler],
) -> None:
    controller, handler = envelope_sink
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=controller.port))
    # Sizes around base64's 3-byte groups and the 57-byte line, beyond one wire chunk.
    data = os.urandom(57 * 1024 * 3 + 58)
    from_file = io.BytesIO(data)
    from_file.seek(123)  # wherever the worker left its file

    await mailer.send(export_message(from_file, len(data)))
    await mailer.send(export_message(data, len(data)))

    (raw_streamed, streamed), (raw_in_memory, in_memory) = received(handler)
    (part,) = list(streamed.iter_attachments())
    assert part.get_payload(decode=True) == data
    assert part.get_filename() == "memberships.csv"
    assert streamed.get_body(("plain",)).get_content() == (  # type: ignore[union-attr]
        in_memory.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    )
    assert b"exporter-attachment:" not in raw_streamed  # the placeholder never travels
    # SIZE declares exactly what arrived (RFC 1870; the sink keeps it with CRLF line ends).
    for options, raw in zip(handler.mail_options, [raw_streamed, raw_in_memory], strict=True):
        assert f"SIZE={len(raw)}" in options


async def test_lines_starting_with_a_dot_survive_the_transfer(
    envelope_sink: tuple[Controller, EnvelopeHandler],
) -> None:
    controller, handler = envelope_sink
    text = ".starts with a dot\n..two dots\n.\nafter a lone dot line\n"
    notice = EmailMessage()
    notice["From"], notice["To"], notice["Subject"] = "a@exporter.local", "b@example.com", "dots"
    notice.set_content(text)

    await Mailer(SmtpSettings(host="127.0.0.1", port=controller.port)).send(notice)

    ((_, message),) = received(handler)
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == text


async def test_a_large_attachment_from_a_file_goes_through_starttls_and_auth(
    ses_like: Controller, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # Several MB through TLS: the writer waits on the socket (flow control) between chunks.
    data = os.urandom(6 * 1024 * 1024 + 1)
    await Mailer(ses_settings(ses_like, tls_files[0])).send(
        export_message(io.BytesIO(data), len(data))
    )
    (path,) = list((tmp_path / "ses-outbox").glob("*.eml"))
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    (part,) = list(message.iter_attachments())
    assert part.get_payload(decode=True) == data


async def test_a_non_ascii_address_is_sent_with_smtputf8(tmp_path: Path) -> None:
    handler = EnvelopeHandler(tmp_path / "outbox")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True)
    controller.start()
    try:
        notice = build_failure_message(
            sender="exports@exporter.local",
            recipient="josé@example.com",
            export_id=EXPORT_ID,
            reason="The database was unavailable.",
        )
        await Mailer(SmtpSettings(host="127.0.0.1", port=controller.port)).send(notice)
    finally:
        controller.stop()
    ((_, message),) = received(handler)
    assert message["To"] == "josé@example.com"
    assert "SMTPUTF8" in handler.mail_options[0]


async def test_a_non_ascii_address_without_smtputf8_is_a_mail_error(tmp_path: Path) -> None:
    handler = EnvelopeHandler(tmp_path / "outbox")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=False)
    controller.start()
    notice = build_failure_message(
        sender="exports@exporter.local",
        recipient="josé@example.com",
        export_id=EXPORT_ID,
        reason="The database was unavailable.",
    )
    try:
        with pytest.raises(MailError):
            await Mailer(SmtpSettings(host="127.0.0.1", port=controller.port)).send(notice)
    finally:
        controller.stop()
    assert received(handler) == []


class BreaksAfter(io.BytesIO):
    """A file whose reads fail once ``limit`` bytes have been read (a disk error)."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self.limit = limit

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.limit:
            raise OSError("read error")
        return super().read(size)


async def test_a_message_that_fails_midway_is_dropped_not_quit_into(
    envelope_sink: tuple[Controller, EnvelopeHandler],
) -> None:
    # Half a message is on the wire: the connection is dropped (the server discards the
    # message) instead of a QUIT the server would read as message text and never answer.
    controller, handler = envelope_sink
    data = os.urandom(57 * 1024 * 4)
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=controller.port, timeout_s=30))

    with pytest.raises(MailError) as caught:
        # Far below the 30 s SMTP timeout a QUIT would wait out.
        await asyncio.wait_for(
            mailer.send(export_message(BreaksAfter(data, 57 * 1024 * 2), len(data))), 10
        )

    assert caught.value.transient
    assert received(handler) == []
