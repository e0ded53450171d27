"""Mail over real SMTP servers: the local sink, an SES-like STARTTLS+AUTH relay, refusals."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
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
from exporter.mail import ExportAttachment, Mailer, build_export_message, human_size

CSV = b"membership_id,plan\r\nabc,pro\r\n"


def message(recipient: str = "user@example.com") -> Any:
    return build_export_message(
        sender="Exporter <exports@exporter.local>",
        recipient=recipient,
        export_id="6c1f5a2e-0000-4000-8000-000000000001",
        attachment=ExportAttachment(CSV, "memberships-2026-11-26.csv", 1, len(CSV)),
    )


def test_message_says_what_it_is_and_carries_the_csv() -> None:
    msg = message()
    assert msg["Subject"] == "Your memberships export is ready (1 rows)"
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "memberships-2026-11-26.csv" in text and "did not ask" in text
    (part,) = list(msg.iter_attachments())
    assert part.get_filename() == "memberships-2026-11-26.csv"
    assert part.get_payload(decode=True) == CSV


@pytest.mark.parametrize(
    ("size", "text"), [(10, "10 bytes"), (2048, "2.0 KB"), (5 * 1024**2, "5.0 MB")]
)
def test_sizes_read_like_a_person_would_write_them(size: int, text: str) -> None:
    assert human_size(size) == text


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
