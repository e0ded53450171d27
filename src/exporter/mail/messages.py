"""What the emails say: the export (its file attached, or a link to it) and the failure notice.

Only building messages here (their MIME with ``mail/mime.py``); ``mail/smtp.py`` sends them.
A file attached from disk is a placeholder in the message (``ExportEmail.streamed_attachment``)
that the sender replaces with the file's base64 on the wire.
"""

from __future__ import annotations

import functools
import html
import textwrap
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import format_datetime, make_msgid
from typing import IO
from zoneinfo import ZoneInfo

from exporter.mail import mime
from exporter.mail.contents import FileContents, describe
from exporter.models import ExportFormat, utcnow
from exporter.selection import ALL

# Lets the recipient's mail rules, support and our tests tie a message to its export.
EXPORT_ID_HEADER = "X-Exporter-Export-Id"
# Both kinds of message carry the export id; this tells the file (or its link) from the
# notice that the export failed, without parsing a subject meant for people.
KIND_HEADER = "X-Exporter-Kind"
KIND_EXPORT = "export"
KIND_FAILURE_NOTICE = "failure-notice"


@dataclass(frozen=True, slots=True)
class ExportAttachment:
    """The finished file, small enough to travel inside the email.

    ``content`` is the file itself, or the open file to read it from while the message is
    sent (``OutgoingMessage``): then it is never in memory as a whole, nor is its base64.
    """

    content: bytes | IO[bytes]
    file_name: str
    row_count: int
    byte_size: int
    content_type: tuple[str, str] = ("text", "csv")


@dataclass(frozen=True, slots=True)
class DownloadLink:
    """A file too large to attach: the email carries a link that opens it in one click.

    ``url`` is a capability link of the API (``links.capability_url``: signed, bound to this
    export and its owner, valid until the file expires, revoked by a cancel); it is never a
    presigned storage URL, and it answers with a fresh one on every use.
    """

    url: str
    expires_at: datetime
    file_name: str
    row_count: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class ScheduleNotice:
    """The export was made by the user's monthly schedule: the email says so, says when the
    next one comes (``next_run_at`` in ``time_zone``; None when unknown or paused) and how
    to stop them (``pause_url``, also sent as RFC 8058 ``List-Unsubscribe`` headers)."""

    pause_url: str
    time_zone: str
    next_run_at: datetime | None = None


# RFC 2369 / RFC 8058: one-click unsubscribe of recurring mail.
LIST_UNSUBSCRIBE_HEADER = "List-Unsubscribe"
LIST_UNSUBSCRIBE_POST_HEADER = "List-Unsubscribe-Post"
LIST_UNSUBSCRIBE_ONE_CLICK = "List-Unsubscribe=One-Click"


def _schedule_notes(schedule: ScheduleNotice) -> list[str]:
    notes = ["This is your monthly export, made by the schedule you set up."]
    if schedule.next_run_at is not None:
        local = schedule.next_run_at.astimezone(ZoneInfo(schedule.time_zone))
        notes.append(
            f"The next one comes on {local:%A} {local.day} {local:%B %Y}, around {local:%H:%M} "
            f"({schedule.time_zone})."
        )
    notes.append("To stop these monthly exports, pause the schedule with this link:")
    return notes


def download_url(public_url: str, export_id: str) -> str:
    """Where a signed-in user downloads an export's file."""
    return f"{public_url.rstrip('/')}/v1/exports/{export_id}/download"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# Longest display name used in a greeting; longer ones are cut (they are only courtesy).
_MAX_NAME = 80


def _one_line(text: str, limit: int) -> str:
    """``text`` without control characters (no line breaks to forge lines with), trimmed."""
    # Printable text has no character of a C* category: the common case skips the scan.
    cleaned = (
        text
        if text.isprintable()
        else "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    )
    return " ".join(cleaned.split())[:limit]


@functools.lru_cache(maxsize=256)
def _wrapped(paragraph: str, *, break_on_hyphens: bool = True) -> tuple[str, ...]:
    """``paragraph`` in lines of at most 78 characters. Cached: most paragraphs are the
    same in every email (or every email of the day), and wrapping was a tenth of an
    email's CPU."""
    return tuple(textwrap.wrap(paragraph, 78, break_on_hyphens=break_on_hyphens))


def _utc(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d at %H:%M} UTC"


@dataclass(frozen=True, slots=True)
class ExportTexts:
    """What an export's email says: its subject, its plain text and the same as HTML."""

    subject: str
    text: str
    html: str


def export_texts(
    file: ExportAttachment | DownloadLink,
    *,
    export_id: str,
    recipient_name: str | None = None,
    sha256: str | None = None,
    page_url: str | None = None,
    schedule: ScheduleNotice | None = None,
    contents: FileContents | None = None,
) -> ExportTexts:
    """What the email for a finished export says: ``file`` attached, or a ``DownloadLink``.

    ``sha256`` (the manifest's checksum) is shown with how to check it; ``page_url`` (the
    self-service page) is where an attached file can be downloaded again. ``schedule``: the
    export is the monthly one (subject, next date, pause link). ``contents`` says the file's
    format, columns, filters and time zone (default: a full CSV in UTC). Every value from a
    user or a record is HTML-escaped in the HTML.
    """
    link = file if isinstance(file, DownloadLink) else None
    rows = f"{file.row_count:,} {'row' if file.row_count == 1 else 'rows'}"
    name = _one_line(recipient_name or "", _MAX_NAME)
    file_name = _one_line(file.file_name, 255)
    subject = f"Your memberships export is ready ({rows})"
    if schedule is not None:
        subject = f"Your monthly memberships export is ready ({rows})"

    contents = contents or _FULL_CSV
    header = " (plus one header row)" if contents.header_row else ""
    facts = [
        ("File", file_name),
        *contents.facts,
        ("Rows", f"{file.row_count:,}{header}"),
        ("Size", human_size(file.byte_size)),
        ("Export id", export_id),
    ]
    if link is not None:
        facts.append(("Link expires", _utc(link.expires_at)))
    if sha256 is not None:
        facts.append(("SHA-256", sha256))
    notes = [] if schedule is None else _schedule_notes(schedule)
    if sha256 is not None:
        notes.append(
            f"To check that the file arrived whole, run: sha256sum {file_name} (on macOS: "
            "shasum -a 256); it must print the SHA-256 above."
        )
    if link is None and page_url is not None:
        notes.append(f"You can download this file again on {page_url} until it expires.")
    pause_url = None if schedule is None else schedule.pause_url
    return ExportTexts(
        subject=subject,
        text=_text_body(name, facts, link, notes, contents.note, pause_url),
        html=_html_body(subject, name, facts, link, notes, contents.note, pause_url),
    )


def build_export_message(
    *,
    sender: str,
    recipient: str,
    export_id: str,
    attachment: ExportAttachment | None = None,
    link: DownloadLink | None = None,
    recipient_name: str | None = None,
    sha256: str | None = None,
    page_url: str | None = None,
    schedule: ScheduleNotice | None = None,
    contents: FileContents | None = None,
) -> ExportEmail:
    """The email for a finished export: the file attached, or a link to it (exactly one).

    What it says is ``export_texts``'s (the other parameters are explained there).
    multipart/alternative (plain text + HTML), inside multipart/mixed with the file when
    attached; a schedule's email also has List-Unsubscribe headers.
    """
    if (attachment is None) == (link is None):
        raise ValueError("an export message carries either an attachment or a link")
    file = attachment if attachment is not None else link
    assert file is not None  # for mypy: exactly one of the two is set
    texts = export_texts(
        file,
        export_id=export_id,
        recipient_name=recipient_name,
        sha256=sha256,
        page_url=page_url,
        schedule=schedule,
        contents=contents,
    )

    message = ExportEmail(policy=mime.WIRE)
    _set_envelope(message, sender, recipient, texts.subject, export_id, KIND_EXPORT)
    if schedule is not None:
        message[LIST_UNSUBSCRIBE_HEADER] = f"<{schedule.pause_url}>"
        message[LIST_UNSUBSCRIBE_POST_HEADER] = LIST_UNSUBSCRIBE_ONE_CLICK
    text, html = mime.new_part(), mime.new_part()
    mime.set_text(text, texts.text, "plain")
    mime.set_text(html, texts.html, "html")
    # MIME-Version where EmailMessage put it (on some parts too: needless, harmless), so the
    # wire stays as it was.
    html["MIME-Version"] = "1.0"
    message["MIME-Version"] = "1.0"
    if attachment is None:
        mime.set_multipart(message, "alternative", [text, html])
        return message
    body, attached = mime.new_part(), mime.new_part()
    mime.set_multipart(body, "alternative", [text, html])
    content = attachment.content
    maintype, subtype = attachment.content_type
    mime.set_attachment(
        attached,
        mime.base64_lines(content, linesep=b"\n").decode("ascii")
        if isinstance(content, bytes)
        else _placeholder(message, content),
        maintype=maintype,
        subtype=subtype,
        file_name=attachment.file_name,
    )
    attached["MIME-Version"] = "1.0"
    mime.set_multipart(message, "mixed", [body, attached])
    return message


def _set_envelope(
    message: Message, sender: str, recipient: str, subject: str, export_id: str, kind: str
) -> None:
    """The headers every email has, in the order they always had. Each value is checked
    for line breaks (``mime.WirePolicy``): none can forge a header."""
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(domain="exporter.local")
    message[EXPORT_ID_HEADER] = export_id
    message[KIND_HEADER] = kind


# Stands for an attachment read from a file while the message is sent: one short base64
# line in the flattened message, found and replaced by the file's base64 on the wire.
# At most 57 bytes, so its base64 is a single line.
_PLACEHOLDER_PREFIX = b"exporter-attachment:"


def _placeholder(message: ExportEmail, source: IO[bytes]) -> str:
    """The attachment's one base64 line, standing for ``source``."""
    marker = _PLACEHOLDER_PREFIX + uuid.uuid4().hex.encode()
    assert len(marker) <= mime.LINE_BYTES
    message.streamed_attachment = (marker, source)
    return mime.base64_lines(marker, linesep=b"\n").decode("ascii")


class ExportEmail(Message):
    """An email built here (``mime.WIRE``: headers kept as set, never parsed) that may take
    its attachment from a file while it is sent.

    ``streamed_attachment`` is (placeholder, file): the message holds the placeholder where
    the file's content goes, and ``Mailer.send`` puts the file's base64 in its place on the
    wire. ``as_bytes()`` of such a message shows the placeholder, not the file. Read it as a
    mail client would with ``email.message_from_bytes(..., policy=policy.default)``.
    """

    streamed_attachment: tuple[bytes, IO[bytes]] | None = None


_LINK_NOTE = (
    "The link opens the file in one click, with no sign-in: it works only for this export, "
    "so keep this email to yourself. You can also download the file from the exports page "
    "while you are signed in."
)
_FULL_CSV = describe(ExportFormat.CSV, ALL)
_NOT_YOU = (
    "If you did not ask for this export, you can ignore this message; nobody else "
    "received it. Consider changing your password if it happens again."
)


def _text_body(
    name: str,
    facts: list[tuple[str, str]],
    link: DownloadLink | None,
    notes: list[str],
    format_note: str,
    pause_url: str | None = None,
) -> str:
    lines = [f"Hello {name}," if name else "Hello,", ""]
    if link is None:
        lines += ["Attached is the export of your memberships that you asked for.", ""]
    else:
        lines += [
            "The export of your memberships that you asked for is ready to download:",
            "",
            f"  {link.url}",
            "",
            *_wrapped(_LINK_NOTE),
            f"It expires on {_utc(link.expires_at)}; after that the file is deleted and you",
            "can ask for a new export.",
            "",
        ]
    width = max(len(label) for label, _ in facts) + 1
    lines += [f"  {label + ':':<{width}} {value}" for label, value in facts]
    for note in notes:
        lines += ["", *_wrapped(note, break_on_hyphens=False)]
    if pause_url is not None:
        lines += ["", f"  {pause_url}"]  # on a line of its own: a link is never wrapped
    lines += ["", *_wrapped(format_note), "", *_wrapped(_NOT_YOU)]
    return "\n".join(lines) + "\n"


def _html_body(
    subject: str,
    name: str,
    facts: list[tuple[str, str]],
    link: DownloadLink | None,
    notes: list[str],
    format_note: str,
    pause_url: str | None = None,
) -> str:
    e = html.escape
    greeting = f"Hello {e(name)}," if name else "Hello,"
    if link is None:
        intro = "<p>Attached is the export of your memberships that you asked for.</p>"
    else:
        intro = (
            "<p>The export of your memberships that you asked for is ready to download:</p>"
            f'<p><a href="{e(link.url)}">Download {e(_one_line(link.file_name, 255))}</a></p>'
            f"<p>{e(_LINK_NOTE)} "
            f"It expires on {e(_utc(link.expires_at))}; after that the file is deleted and "
            "you can ask for a new export.</p>"
        )
    rows = "".join(
        f'<tr><th align="left" style="padding-right:1em">{e(label)}</th><td>{e(value)}</td></tr>'
        for label, value in facts
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(subject)}</title></head>\n"
        '<body style="font-family:sans-serif;line-height:1.5;color:#222">\n'
        f"<p>{greeting}</p>\n{intro}\n"
        f'<table role="presentation">{rows}</table>\n'
        + "".join(f"<p>{e(note)}</p>\n" for note in notes)
        + (
            ""
            if pause_url is None
            else f'<p><a href="{e(pause_url)}">Pause my monthly export</a></p>\n'
        )
        + f"<p>{e(format_note)}</p>\n"
        f'<p style="color:#555">{e(_NOT_YOU)}</p>\n'
        "</body></html>\n"
    )


def build_failure_message(
    *, sender: str, recipient: str, export_id: str, reason: str
) -> ExportEmail:
    """The notice that an export failed: what went wrong in plain words, and what to do.

    ``reason`` is one sentence from our own table of error codes, never an exception text.
    """
    message = ExportEmail(policy=mime.WIRE)
    subject = "Your memberships export could not be completed"
    _set_envelope(message, sender, recipient, subject, export_id, KIND_FAILURE_NOTICE)
    mime.set_text(
        message,
        "Hello,\n\n"
        "We could not complete the export of your memberships that you asked for.\n\n"
        f"  What went wrong: {reason}\n"
        f"  Export id: {export_id}\n\n"
        "No file was sent, and nothing in your account changed. You can ask for the export\n"
        "again at any time; if it fails again, contact support and quote the export id.\n",
        "plain",
    )
    message["MIME-Version"] = "1.0"  # after the content, where EmailMessage put it
    return message
