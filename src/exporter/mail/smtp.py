"""How the emails are sent: SMTP (a local sink, or Amazon SES in AWS); a worker keeps one
connection and reuses it for every message.

A message whose attachment is read from a file (``mail/messages.py``: ``ExportEmail``) goes
out in chunks, the file base64-encoded as it is written, so memory does not grow with it.
SMTP errors become ``MailError`` (transient for 4xx and connection trouble).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from typing import IO

import aiosmtplib
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message

from exporter.config import SmtpSettings
from exporter.errors import MailError
from exporter.mail import mime
from exporter.metrics import observe_smtp_connection

# A kept connection idle this long is checked (NOOP) before its next message: relays close
# idle connections (SES after some seconds), and a NOOP is cheaper than a failed MAIL.
IDLE_CHECK_S = 5.0
# The goodbye at shutdown is a courtesy: never wait long for it.
QUIT_TIMEOUT_S = 1.0


class Mailer:
    """Sends messages over SMTP. With ``keep_connection`` (a worker's ``Resources``) one
    connection is opened, logged in once and reused for every message, one at a time,
    checked with NOOP when it was idle and opened again when it fails; ``close()`` says
    goodbye. Without it (tools, tests), one connection per message."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        keep_connection: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._keep = keep_connection
        self._clock = clock
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0
        self._lock = asyncio.Lock()

    @property
    def sender(self) -> str:
        return self._settings.from_address

    async def send(
        self, message: Message, *, on_accepted: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Send one message. ``on_accepted`` runs as soon as the server accepted it, before
        anything else (a goodbye, the next message): recording the send there keeps the
        window in which a crash causes a second email as short as one write
        (docs/reliability.md).

        The message goes out in chunks (``wire_chunks``): an attachment read from a file is
        base64-encoded as it is sent, so memory does not grow with the attachment.
        """
        with _mail_errors():
            if self._keep:
                async with self._lock:
                    await self._send_kept(message)
            else:
                async with self._new_client() as client:
                    await self._login(client)
                    await _send_in_chunks(client, message, timeout_s=self._settings.timeout_s)
                    if on_accepted is not None:
                        await on_accepted()
                return
        if on_accepted is not None:
            await on_accepted()

    async def close(self) -> None:
        """Say goodbye on the kept connection, if there is one (best effort)."""
        async with self._lock:
            client, self._client = self._client, None
            if client is not None and client.is_connected:
                try:
                    # Briefly: a relay that stopped answering must not hold a shutdown.
                    await client.quit(timeout=QUIT_TIMEOUT_S)
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    pass
                finally:
                    client.close()

    async def _send_kept(self, message: Message) -> None:
        reused = self._client is not None
        client = await self._connection()
        try:
            await _send_in_chunks(client, message, timeout_s=self._settings.timeout_s)
        except _DeadBeforeSending:
            self._drop()
            if not reused:
                raise
            # The relay closed the kept connection since its last use: nothing of this
            # message was sent, so a new connection sends it.
            await _send_in_chunks(
                await self._connection(), message, timeout_s=self._settings.timeout_s
            )
        except BaseException:
            # A refusal mid-transaction, a timeout, a half-sent message: start clean.
            self._drop()
            raise
        self._last_used = self._clock()

    async def _connection(self) -> aiosmtplib.SMTP:
        """The kept connection, checked when it was idle; a new one when it is missing or
        fails its check."""
        client = self._client
        if client is not None and client.is_connected:
            if self._clock() - self._last_used < IDLE_CHECK_S:
                return client
            try:
                await client.noop(timeout=self._settings.timeout_s)
                return client
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
        self._drop()
        client = self._new_client()
        await client.connect()
        observe_smtp_connection()
        try:
            await self._login(client)
        except BaseException:
            client.close()
            raise
        self._client = client
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _new_client(self) -> aiosmtplib.SMTP:
        cfg = self._settings
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            start_tls=cfg.start_tls,
            use_tls=cfg.use_tls,
            cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
            timeout=cfg.timeout_s,
        )

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        cfg = self._settings
        if cfg.username and cfg.password:
            await client.login(cfg.username.get_secret_value(), cfg.password.get_secret_value())


class _DeadBeforeSending(aiosmtplib.SMTPServerDisconnected):
    """The connection was found closed at the envelope's first command (MAIL): nothing of
    the message reached the server."""


@contextmanager
def _mail_errors() -> Iterator[None]:
    """SMTP errors as ``MailError``: transient for 4xx and connection trouble."""
    try:
        yield
    except aiosmtplib.SMTPRecipientRefused as exc:
        raise MailError(
            "recipient_refused",
            f"SMTP refused recipient ({exc.code})",
            transient=400 <= exc.code < 500,
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        # 4xx (e.g. SES "454 Throttling failure") is worth retrying; 5xx is final.
        raise MailError(
            "smtp_rejected",
            f"SMTP {exc.code}: {exc.message[:200]}",
            transient=400 <= exc.code < 500,
        ) from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        # Connection refused, timeouts, TLS failures: the server may be back later.
        raise MailError(
            "smtp_unavailable", f"SMTP unavailable: {type(exc).__name__}", transient=True
        ) from exc


# Bytes of the file base64-encoded per chunk on the wire: a multiple of 57, so every chunk
# but the last is whole 76-character lines (as the email package writes base64).
_WIRE_CHUNK_BYTES = mime.LINE_BYTES * 1024
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


def _transparent(data: bytes) -> tuple[int, bytes]:
    """CRLF line ends, then RFC 5321 dot-stuffing, as aiosmtplib applies to a message; with
    the size SIZE declares (RFC 1870: CRLF counted, doubled dots not)."""
    normalised = _LINE_ENDS.sub(b"\r\n", data)
    return len(normalised), _DOT_AT_LINE_START.sub(b"..", normalised)


def base64_wire_size(size: int) -> int:
    """Octets of ``size`` bytes in base64 on the wire: 4 per 3, in 76-character lines with
    CRLF (as the email package writes them)."""
    encoded = 4 * -(-size // 3)
    return encoded + 2 * -(-encoded // 76)


def _base64_lines(source: IO[bytes], size: int) -> Iterator[bytes]:
    source.seek(0)
    left = size
    while left > 0:
        chunk = source.read(min(_WIRE_CHUNK_BYTES, left))
        if not chunk:
            raise ValueError(f"attachment file ended {left} bytes short of its size")
        left -= len(chunk)
        yield mime.base64_lines(chunk)


def wire_chunks(flat: bytes, message: Message) -> tuple[int, Iterator[bytes]]:
    """What DATA carries for ``flat`` (the flattened ``message``), and its SIZE in octets.

    Without a streamed attachment that is ``flat`` made transparent. With one, the
    placeholder's base64 line is cut out and the file's base64 goes in its place, read in
    chunks as the iterator is consumed (base64 lines never start with a dot).
    """
    streamed = getattr(message, "streamed_attachment", None)
    if streamed is None:
        size, whole = _transparent(flat)
        return size, iter((whole,))
    placeholder, source = streamed
    line = base64.b64encode(placeholder) + b"\r\n"
    before, found, after = flat.partition(line)
    if not found:
        raise ValueError("the attachment's placeholder is missing from the message")
    (head_size, head), (tail_size, tail) = _transparent(before), _transparent(after)
    file_size = source.seek(0, 2)

    def chunks() -> Iterator[bytes]:
        yield head
        yield from _base64_lines(source, file_size)
        yield tail

    return head_size + base64_wire_size(file_size) + tail_size, chunks()


def message_data(message: Message, *, utf8: bool, eight_bit: bool) -> tuple[int, Iterator[bytes]]:
    """What DATA carries for ``message`` (``wire_chunks``) and its SIZE: flattened for a
    server with SMTPUTF8 (``utf8``) or without, with 8BITMIME (``eight_bit``) or without.

    A message built by ``mail/messages.py`` (``mime.WIRE``) is written by ``mime.flatten``;
    any other by aiosmtplib, as its ``send_message`` would."""
    cte_type = "8bit" if eight_bit else "7bit"
    if isinstance(message.policy, mime.WirePolicy):
        flat = mime.flatten(message, utf8=utf8, cte_type=cte_type)
    else:
        flat = flatten_message(message, utf8=utf8, cte_type=cte_type)
    return wire_chunks(flat, message)


async def _send_in_chunks(client: aiosmtplib.SMTP, message: Message, *, timeout_s: float) -> None:
    """MAIL, RCPT and DATA with the message written chunk by chunk under flow control.

    aiosmtplib's own ``send_message`` flattens, normalises and copies the whole message
    several times (about 8x an attachment's size in memory); this writes as it reads. It
    uses aiosmtplib's protocol for DATA (pinned in requirements.lock; tests/mail/test_smtp.py
    runs it against a plain sink and an SES-like STARTTLS + AUTH relay).
    """
    sender = extract_sender(message)
    recipients = extract_recipients(message)
    if sender is None or not recipients:
        raise ValueError("a message needs From and To")
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    options: list[str] = []
    # As aiosmtplib's send_message: a non-ASCII address needs SMTPUTF8 from the server.
    utf8 = not (sender + "".join(recipients)).isascii()
    if utf8:
        if not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("a non-ASCII address needs SMTPUTF8")
        options.append("SMTPUTF8")
    eight_bit = client.supports_extension("8BITMIME")
    if eight_bit:
        options.append("BODY=8BITMIME")
    size, chunks = message_data(message, utf8=utf8, eight_bit=eight_bit)
    if client.supports_extension("size"):
        options.insert(0, f"SIZE={size}")
    encoding = "utf-8" if utf8 else "ascii"
    try:
        await client.mail(sender, options=options, encoding=encoding)
    except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
        raise _DeadBeforeSending(str(exc)) from exc
    for recipient in recipients:
        await client.rcpt(recipient, encoding=encoding)
    protocol = client.protocol
    if protocol is None or protocol._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    async with protocol._command_lock:
        protocol._response_pending = True
        protocol.write(b"DATA\r\n")
        started = await protocol.read_response(timeout=timeout_s)
        if started.code != aiosmtplib.SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(started.code, started.message)
        # Set before the body, as aiosmtplib does: a server that refuses mid-message (552,
        # too big) has its answer kept for the read below instead of dropped.
        protocol._response_pending = True
        try:
            for chunk in chunks:
                protocol.write(chunk)
                async with asyncio.timeout(timeout_s):
                    await protocol._drain_helper()  # waits while the socket's buffer is full
        except BaseException:
            # Half a message is on the wire: a QUIT now would be read as message text (and
            # wait out the timeout). Drop the connection; the server discards the message.
            client.close()
            raise
        protocol.write(b".\r\n")
        done = await protocol.read_response(timeout=timeout_s)
        if done.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(done.code, done.message)
