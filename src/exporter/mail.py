"""Building and sending the export email over SMTP (a local sink, or Amazon SES in AWS)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib

from exporter.config import SmtpSettings
from exporter.errors import MailError
from exporter.models import utcnow

# Lets the recipient's mail rules, support and our tests tie a message to its export.
EXPORT_ID_HEADER = "X-Exporter-Export-Id"


@dataclass(frozen=True, slots=True)
class ExportAttachment:
    content: bytes
    file_name: str
    row_count: int
    byte_size: int
    content_type: tuple[str, str] = ("text", "csv")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def build_export_message(
    *, sender: str, recipient: str, export_id: str, attachment: ExportAttachment
) -> EmailMessage:
    """The email that carries a finished export. Nothing in it comes from the request."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = f"Your memberships export is ready ({attachment.row_count:,} rows)"
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(domain="exporter.local")
    message[EXPORT_ID_HEADER] = export_id
    message.set_content(
        "Hello,\n\n"
        "Attached is the export of your memberships that you asked for.\n\n"
        f"  File:  {attachment.file_name}\n"
        f"  Rows:  {attachment.row_count:,} (plus one header row)\n"
        f"  Size:  {human_size(attachment.byte_size)}\n"
        f"  Export id: {export_id}\n\n"
        "The file is CSV (comma separated, UTF-8, RFC 4180). Times are UTC (ISO 8601);\n"
        "prices are decimal numbers with their currency in the next column.\n\n"
        "If you did not ask for this export, you can ignore this message; nobody else\n"
        "received it. Consider changing your password if it happens again.\n"
    )
    message.add_attachment(
        attachment.content,
        maintype=attachment.content_type[0],
        subtype=attachment.content_type[1],
        filename=attachment.file_name,
        params={"charset": "utf-8"} if attachment.content_type[0] == "text" else {},
    )
    return message


class Mailer:
    """Sends messages with one SMTP connection per message (SES closes idle ones anyway)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    @property
    def sender(self) -> str:
        return self._settings.from_address

    async def send(
        self, message: EmailMessage, *, on_accepted: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Send one message. ``on_accepted`` runs as soon as the server accepted it, before
        the goodbye (QUIT): recording the send there keeps the window in which a crash
        causes a second email as short as one write (docs/reliability.md)."""
        cfg = self._settings
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            start_tls=cfg.start_tls,
            use_tls=cfg.use_tls,
            cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
            timeout=cfg.timeout_s,
        )
        try:
            async with client:
                if cfg.username and cfg.password:
                    await client.login(
                        cfg.username.get_secret_value(), cfg.password.get_secret_value()
                    )
                await client.send_message(message)
                if on_accepted is not None:
                    await on_accepted()
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            transient = all(400 <= c < 500 for c in codes)
            raise MailError(
                "recipient_refused", f"SMTP refused recipient ({codes})", transient=transient
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx (e.g. SES "454 Throttling failure") is worth retrying; 5xx is final.
            raise MailError(
                "smtp_rejected",
                f"SMTP {exc.code}: {exc.message[:200]}",
                transient=400 <= exc.code < 500,
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Connection refused, timeouts, TLS failures: the server may be back later.
            raise MailError(
                "smtp_unavailable", f"SMTP unavailable: {type(exc).__name__}", transient=True
            ) from exc


def build_failure_message(
    *, sender: str, recipient: str, export_id: str, reason: str
) -> EmailMessage:
    """The notice that an export failed: what went wrong in plain words, and what to do.

    ``reason`` is one sentence from our own table of error codes, never an exception text.
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "Your memberships export could not be completed"
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(domain="exporter.local")
    message[EXPORT_ID_HEADER] = export_id
    message.set_content(
        "Hello,\n\n"
        "We could not complete the export of your memberships that you asked for.\n\n"
        f"  What went wrong: {reason}\n"
        f"  Export id: {export_id}\n\n"
        "No file was sent, and nothing in your account changed. You can ask for the export\n"
        "again at any time; if it fails again, contact support and quote the export id.\n"
    )
    return message
