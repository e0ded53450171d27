"""What the emails say: the export with its file or a link, the failure notice, their headers."""

from __future__ import annotations

import dataclasses
import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from exporter.mail.messages import (
    EXPORT_ID_HEADER,
    KIND_EXPORT,
    KIND_FAILURE_NOTICE,
    KIND_HEADER,
    DownloadLink,
    ExportAttachment,
    build_export_message,
    build_failure_message,
    download_url,
    human_size,
)

CSV = b"membership_id,plan\r\nabc,pro\r\n"
EXPORT_ID = "6c1f5a2e-0000-4000-8000-000000000001"


def message(recipient: str = "user@example.com") -> EmailMessage:
    return build_export_message(
        sender="Exporter <exports@exporter.local>",
        recipient=recipient,
        export_id=EXPORT_ID,
        attachment=ExportAttachment(CSV, "memberships-2026-11-26.csv", 1, len(CSV)),
    )


def parsed(msg: EmailMessage) -> EmailMessage:
    """The message as a mail client sees it: serialised, then parsed back."""
    again = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(again, EmailMessage)
    return again


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


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
        build_export_message(
            sender="Exporter <exports@exporter.local>",
            recipient="user@example.com",
            recipient_name=name,
            export_id=EXPORT_ID,
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
        build_export_message(
            sender="Exporter <exports@exporter.local>",
            recipient="user@example.com",
            export_id=EXPORT_ID,
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
    _, html = bodies(msg)
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
        build_export_message(
            sender="Exporter <exports@exporter.local>",
            recipient="user@example.com",
            export_id=EXPORT_ID,
            link=LINK,
        )
    )
    notice = parsed(
        build_failure_message(
            sender="Exporter <exports@exporter.local>",
            recipient="user@example.com",
            export_id=EXPORT_ID,
            reason="our mail service could not send the file.",
        )
    )
    # All three name the export; only the kind says whether the user got their data.
    assert {m[EXPORT_ID_HEADER] for m in (attached, linked, notice)} == {EXPORT_ID}
    assert attached[KIND_HEADER] == linked[KIND_HEADER] == KIND_EXPORT
    assert notice[KIND_HEADER] == KIND_FAILURE_NOTICE


@pytest.mark.parametrize(
    ("size", "text"), [(10, "10 bytes"), (2048, "2.0 KB"), (5 * 1024**2, "5.0 MB")]
)
def test_sizes_read_like_a_person_would_write_them(size: int, text: str) -> None:
    assert human_size(size) == text
