"""What the emails say: the export with its file or a link, the failure notice, their headers."""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import io
import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from typing import Any

import pytest

from exporter.mail.messages import (
    EXPORT_ID_HEADER,
    KIND_EXPORT,
    KIND_FAILURE_NOTICE,
    KIND_HEADER,
    DownloadLink,
    ExportAttachment,
    ExportEmail,
    ScheduleNotice,
    build_export_message,
    build_failure_message,
    download_url,
    human_size,
)
from exporter.mail.smtp import message_data

CSV = b"membership_id,plan\r\nabc,pro\r\n"
EXPORT_ID = "6c1f5a2e-0000-4000-8000-000000000001"


def message(
    recipient: str = "user@example.com",
    *,
    attachment: ExportAttachment | None = None,
    link: DownloadLink | None = None,
    **options: Any,
) -> ExportEmail:
    """The email of EXPORT_ID from our sender: the small CSV attached unless ``attachment``
    or ``link`` says otherwise; ``options`` as ``build_export_message`` takes them."""
    if attachment is None and link is None:
        attachment = ExportAttachment(CSV, "memberships-2026-11-26.csv", 1, len(CSV))
    return build_export_message(
        sender="Exporter <exports@exporter.local>",
        recipient=recipient,
        export_id=EXPORT_ID,
        attachment=attachment,
        link=link,
        **options,
    )


def failure_notice(
    *, sender: str = "Exporter <exports@exporter.local>", recipient: str = "user@example.com"
) -> Message:
    """The failure notice of EXPORT_ID (the mail service could not send the file)."""
    return build_failure_message(
        sender=sender,
        recipient=recipient,
        export_id=EXPORT_ID,
        reason="our mail service could not send the file.",
    )


def on_the_wire(msg: Message, *, utf8: bool = False, eight_bit: bool = True) -> bytes:
    """What DATA carries for ``msg`` (as ``Mailer.send`` writes it to a server with or
    without SMTPUTF8 and 8BITMIME), its dot-stuffing undone as the server undoes it."""
    _, chunks = message_data(msg, utf8=utf8, eight_bit=eight_bit)
    return DOT_STUFFED.sub(b"", b"".join(chunks))


DOT_STUFFED = re.compile(rb"(?m)^\.")


def parsed(msg: Message, *, utf8: bool = False, eight_bit: bool = True) -> EmailMessage:
    """The message as a mail client sees it: as it went over the wire, parsed back."""
    again = message_from_bytes(
        on_the_wire(msg, utf8=utf8, eight_bit=eight_bit), policy=policy.default
    )
    assert isinstance(again, EmailMessage)
    return again


def bodies(msg: EmailMessage) -> tuple[str, str]:
    """The text and the HTML of a parsed message, with the wire's CRLF line ends as LF."""
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return (
        text.get_content().replace("\r\n", "\n"),
        html.get_content().replace("\r\n", "\n"),
    )


LINK = DownloadLink(
    url=download_url("https://exports.example.com/", EXPORT_ID),
    expires_at=datetime.datetime(
        2026, 12, 3, 15, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    ),
    file_name="memberships-2026-11-26.csv.gz",
    row_count=250_000,
    byte_size=42 * 1024**2,
)


def test_attached_export_is_text_and_html_alternatives_plus_the_file() -> None:
    msg = parsed(message())

    assert msg["Subject"] == "Your memberships export is ready (1 row)"
    assert msg[EXPORT_ID_HEADER] == EXPORT_ID
    assert msg.get_content_type() == "multipart/mixed"
    body, attached = msg.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.iter_parts()] == ["text/plain", "text/html"]
    for text in bodies(msg):
        assert "memberships-2026-11-26.csv" in text
        assert "1 (plus one header row)" in text and human_size(len(CSV)) in text
        assert "did not ask" in text and EXPORT_ID in text
        assert "expires" not in text  # nothing to expire: the file is in the message
    assert attached.get_filename() == "memberships-2026-11-26.csv"
    assert attached.get_content_type() == "text/csv"
    assert attached.get_payload(decode=True) == CSV


def test_hostile_display_name_and_file_name_stay_text() -> None:
    name = '<script>alert("x")</script> & Co\r\nBcc: victim@example.com'
    file_name = "<img src=x onerror=alert(1)>.csv"
    msg = parsed(
        message(
            recipient_name=name,
            attachment=ExportAttachment(CSV, file_name, 1, len(CSV)),
        )
    )

    text, html = bodies(msg)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co Bcc:" in html
    assert "&lt;img src=x onerror=alert(1)&gt;.csv" in html
    # Plain text is text: shown as typed, but on one line, so it forges no lines.
    assert 'Hello <script>alert("x")</script> & Co Bcc: victim@example.com,' in text
    assert not any(line.startswith("Bcc:") for line in text.splitlines())
    assert msg["Bcc"] is None
    (attached,) = msg.iter_attachments()
    assert attached.get_filename() == file_name


def test_link_variant_says_where_and_until_when_without_attaching() -> None:
    msg = parsed(
        message(
            link=LINK,
        )
    )

    assert msg["Subject"] == "Your memberships export is ready (250,000 rows)"
    assert msg.get_content_type() == "multipart/alternative"
    assert list(msg.iter_attachments()) == []
    url = f"https://exports.example.com/v1/exports/{EXPORT_ID}/download"
    text, html = bodies(msg)
    for body in (text, html):
        assert "2026-12-03 at 14:05 UTC" in body  # the expiry, in UTC
        assert "one click, with no sign-in" in body and "did not ask" in body
        assert "memberships-2026-11-26.csv.gz" in body and "42.0 MB" in body
    assert f"  {url}\n" in text
    assert f'<a href="{url}">' in html


def test_link_url_is_escaped_inside_the_html_attribute() -> None:
    link = dataclasses.replace(LINK, url='https://x.example/d?a=1&b="2"')
    msg = build_export_message(
        sender="s@example.com", recipient="r@example.com", export_id=EXPORT_ID, link=link
    )
    _, html = bodies(parsed(msg))
    assert '<a href="https://x.example/d?a=1&amp;b=&quot;2&quot;">' in html


@pytest.mark.parametrize("both", [True, False])
def test_a_message_carries_exactly_one_of_attachment_and_link(both: bool) -> None:
    attachment = ExportAttachment(CSV, "m.csv", 1, len(CSV)) if both else None
    with pytest.raises(ValueError, match="either an attachment or a link"):
        build_export_message(
            sender="s@example.com",
            recipient="r@example.com",
            export_id=EXPORT_ID,
            attachment=attachment,
            link=LINK if both else None,
        )


def test_the_kind_header_tells_the_file_from_a_failure_notice_for_the_same_export() -> None:
    attached = parsed(message())
    linked = parsed(
        message(
            link=LINK,
        )
    )
    notice = parsed(failure_notice())
    # All three name the export; only the kind says whether the user got their data.
    assert {m[EXPORT_ID_HEADER] for m in (attached, linked, notice)} == {EXPORT_ID}
    assert attached[KIND_HEADER] == linked[KIND_HEADER] == KIND_EXPORT
    assert notice[KIND_HEADER] == KIND_FAILURE_NOTICE


@pytest.mark.parametrize(
    ("size", "text"), [(10, "10 bytes"), (2048, "2.0 KB"), (5 * 1024**2, "5.0 MB")]
)
def test_sizes_read_like_a_person_would_write_them(size: int, text: str) -> None:
    assert human_size(size) == text


# On the wire: the shape of every kind of message, pinned part by part (content type and
# header names in order), with what each part decodes to. A new way of building or writing
# the messages must give the same.

TOP = ["From", "To", "Subject", "Date", "Message-ID", EXPORT_ID_HEADER, KIND_HEADER]
ALTERNATIVE = [
    (1, "text/plain", ["Content-Type", "Content-Transfer-Encoding"]),
    (1, "text/html", ["Content-Type", "Content-Transfer-Encoding", "MIME-Version"]),
]
ATTACHED_CSV = [
    (0, "multipart/mixed", [*TOP, "MIME-Version", "Content-Type"]),
    (1, "multipart/alternative", ["Content-Type"]),
    *((2, kind, names) for _, kind, names in ALTERNATIVE),
    (
        1,
        "text/csv",
        ["Content-Transfer-Encoding", "Content-Disposition", "Content-Type", "MIME-Version"],
    ),
]


def shape(msg: EmailMessage) -> list[tuple[int, str, list[str]]]:
    """Every part in order: its depth, content type and header names."""

    def walk(part: EmailMessage, depth: int) -> Iterator[tuple[int, str, list[str]]]:
        yield depth, part.get_content_type(), list(part.keys())
        if part.is_multipart():
            for sub in part.iter_parts():
                assert isinstance(sub, EmailMessage)
                yield from walk(sub, depth + 1)

    return list(walk(msg, 0))


def encodings(msg: EmailMessage) -> list[str]:
    return [p["Content-Transfer-Encoding"] for p in msg.walk() if not p.is_multipart()]


def assert_wire_lines(raw: bytes) -> None:
    """CRLF line ends only, no line over RFC 5322's 998 characters."""
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def assert_top_headers(msg: EmailMessage, *, to: str = "user@example.com") -> None:
    assert msg["From"] == "Exporter <exports@exporter.local>"
    assert msg["To"] == to
    assert msg[EXPORT_ID_HEADER] == EXPORT_ID
    sent = email.utils.parsedate_to_datetime(msg["Date"])
    assert abs(sent - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=5)
    assert re.fullmatch(r"<[^<>@\s]+@exporter\.local>", msg["Message-ID"])


def test_an_attached_export_on_the_wire() -> None:
    raw = on_the_wire(message())
    msg = parsed(message())

    assert_wire_lines(raw)
    assert shape(msg) == ATTACHED_CSV
    assert_top_headers(msg)
    assert msg[KIND_HEADER] == KIND_EXPORT
    assert msg["Subject"] == "Your memberships export is ready (1 row)"
    assert encodings(msg) == ["7bit", "quoted-printable", "base64"]
    (attached,) = msg.iter_attachments()
    assert attached["Content-Type"] == 'text/csv; charset="utf-8"'
    assert attached["Content-Disposition"] == 'attachment; filename="memberships-2026-11-26.csv"'
    assert attached.get_payload(decode=True) == CSV


@pytest.mark.parametrize("size", [0, 1, 57, 58, 57 * 1024 - 1, 57 * 1024 * 2 + 3, 140 * 1024])
def test_an_attachment_read_from_a_file_is_base64_in_76_character_lines(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    streamed = message(
        attachment=ExportAttachment(io.BytesIO(data), "memberships.csv", 1, size),
    )
    raw = on_the_wire(streamed)

    assert_wire_lines(raw)
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert shape(msg) == ATTACHED_CSV
    (attached,) = msg.iter_attachments()
    assert attached.get_payload(decode=True) == data
    body = attached.get_payload()
    assert isinstance(body, str)
    lines = body.split("\r\n")
    assert lines[-1] == "" and all(len(line) == 76 for line in lines[:-2])
    assert 0 < len(lines[-2]) <= 76 if size else lines == [""]


def test_a_file_attached_that_is_not_text_has_no_charset() -> None:
    msg = parsed(
        message(
            attachment=ExportAttachment(
                b"PAR1\x00\xff", "m.parquet", 1, 6, content_type=("application", "x-parquet")
            ),
        )
    )
    assert shape(msg)[-1] == (
        1,
        "application/x-parquet",
        ["Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version"],
    )
    (attached,) = msg.iter_attachments()
    assert attached["Content-Type"] == "application/x-parquet"
    assert attached.get_payload(decode=True) == b"PAR1\x00\xff"


def test_a_linked_export_on_the_wire() -> None:
    linked = message(
        link=LINK,
        sha256="ab" * 32,
        page_url="https://exports.example.com/",
    )
    assert_wire_lines(on_the_wire(linked))
    msg = parsed(linked)

    assert shape(msg) == [
        (0, "multipart/alternative", [*TOP, "MIME-Version", "Content-Type"]),
        *ALTERNATIVE,
    ]
    assert_top_headers(msg)
    assert encodings(msg) == ["quoted-printable", "quoted-printable"]
    text, html = bodies(msg)
    assert "SHA-256:      " + "ab" * 32 in text and "<td>" + "ab" * 32 + "</td>" in html


def test_a_scheduled_export_on_the_wire() -> None:
    url = "https://exports.example.com/v1/schedule-pause/" + "t" * 300
    scheduled = message(
        attachment=ExportAttachment(CSV, "memberships-2026-11-26.csv", 1, len(CSV)),
        schedule=ScheduleNotice(
            pause_url=url,
            time_zone="Asia/Tokyo",
            next_run_at=datetime.datetime(2027, 1, 31, 15, 30, tzinfo=datetime.UTC),
        ),
    )
    wire = on_the_wire(scheduled)
    assert_wire_lines(wire)
    # As RFC 2369 and 8058 want it, readable by a receiver that does not decode encoded
    # words: the URL in angle brackets, on one line (RFC 5322 allows 998 characters).
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in wire
    msg = parsed(scheduled)

    top = [*TOP, "List-Unsubscribe", "List-Unsubscribe-Post", "MIME-Version", "Content-Type"]
    assert shape(msg) == [(0, "multipart/mixed", top), *ATTACHED_CSV[1:]]
    assert msg["Subject"] == "Your monthly memberships export is ready (1 row)"
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = bodies(msg)
    assert "Monday 1 February 2027, around 00:30 (Asia/Tokyo)" in text
    assert f"\n  {url}\n" in text and f'<a href="{url}">Pause my monthly export</a>' in html


@pytest.mark.parametrize(("eight_bit", "text_encoding"), [(True, "8bit"), (False, "base64")])
def test_a_name_beyond_ascii_reads_the_same_with_or_without_8bitmime(
    eight_bit: bool, text_encoding: str
) -> None:
    name = "Zoë Ångström 山田 🚀"
    msg = parsed(
        message(
            recipient_name=name,
            attachment=ExportAttachment(CSV, "memberships-2026-11-26.csv", 1, len(CSV)),
        ),
        eight_bit=eight_bit,
    )
    assert encodings(msg) == [text_encoding, "quoted-printable", "base64"]
    text, html = bodies(msg)
    assert f"Hello {name},\n" in text and f"<p>Hello {name},</p>" in html


def test_a_failure_notice_on_the_wire() -> None:
    notice = failure_notice()
    assert_wire_lines(on_the_wire(notice))
    msg = parsed(notice)

    assert shape(msg) == [
        (0, "text/plain", [*TOP, "Content-Type", "Content-Transfer-Encoding", "MIME-Version"])
    ]
    assert_top_headers(msg)
    assert msg[KIND_HEADER] == KIND_FAILURE_NOTICE
    assert msg["Subject"] == "Your memberships export could not be completed"
    assert msg["Content-Type"] == 'text/plain; charset="utf-8"'
    text = msg.get_content().replace("\r\n", "\n")
    assert "  What went wrong: our mail service could not send the file.\n" in text
    assert f"  Export id: {EXPORT_ID}\n" in text


def test_an_address_beyond_ascii_goes_out_as_utf8_headers() -> None:
    notice = failure_notice(recipient="josé@exämple.com")
    raw = on_the_wire(notice, utf8=True)
    assert "\r\nTo: josé@exämple.com\r\n".encode() in raw
    assert_top_headers(parsed(notice, utf8=True), to="josé@exämple.com")


@pytest.mark.parametrize("field", ["recipient", "export_id", "sender", "file_name", "pause_url"])
@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\r"])
def test_no_header_can_be_forged_with_a_line_break(field: str, line_break: str) -> None:
    forged = f"x{line_break}Bcc: victim@example.com"
    values = {
        "sender": "exports@exporter.local",
        "recipient": "user@example.com",
        "export_id": EXPORT_ID,
        "file_name": "m.csv",
        "pause_url": "https://exports.example.com/v1/schedule-pause/t",
    }
    values[field] = values[field] + forged
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        build_export_message(
            sender=values["sender"],
            recipient=values["recipient"],
            export_id=values["export_id"],
            attachment=ExportAttachment(CSV, values["file_name"], 1, len(CSV)),
            schedule=ScheduleNotice(pause_url=values["pause_url"], time_zone="UTC"),
        )


@pytest.mark.parametrize("utf8", [False, True])
def test_a_sender_name_beyond_ascii_is_an_encoded_word_unless_smtputf8(utf8: bool) -> None:
    notice = failure_notice(sender="Exportér Zürich <exports@exporter.local>")
    raw = on_the_wire(notice, utf8=utf8)
    (line,) = [line for line in raw.split(b"\r\n") if line.startswith(b"From: ")]
    assert line.isascii() is not utf8
    assert parsed(notice, utf8=utf8)["From"] == "Exportér Zürich <exports@exporter.local>"
