"""MIME parts without header parsing (mail/mime.py), checked against the email package
itself: text encodings against ``EmailMessage.set_content``, header folding against
``policy.default``'s header classes, ``flatten`` against ``BytesGenerator``, base64 lines
against ``base64.encodebytes``."""

from __future__ import annotations

import base64
import datetime
import functools
import io
import os
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import ParameterizedMIMEHeader
from email.message import EmailMessage, Message

import pytest

from exporter.mail.messages import (
    DownloadLink,
    ExportAttachment,
    ScheduleNotice,
    build_export_message,
    build_failure_message,
)
from exporter.mail.mime import WIRE, base64_lines, flatten, new_part, set_text

LONG = "a line longer than seventy-eight characters, " * 3
TEXTS = {
    "empty": "",
    "ascii": "Hello,\n\nshort lines only.\n",
    "no final line end": "Hello,\nno line end",
    "8bit": "Hello Zoë Ångström 山田 🚀,\n\nshort lines.\n",
    "quoted-printable, few lines": f"Hello,\n{LONG}\nend\n",
    "quoted-printable, many lines": "".join(f"line {i} = {LONG}\n" for i in range(25)),
    "quoted-printable, beyond ascii": f"Hello Zoë,\n{LONG}\n" + "x\n" * 12,
    "base64": ("山田太郎" * 30 + "\n") * 3,
    "base64, many lines": ("山田太郎" * 30 + "\n") * 14,
    "trailing spaces": f"{LONG}   \n\t\n{LONG}\t\n" * 6,
    "dots and froms": f".\n..\nFrom here\n{LONG}\n",
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
@pytest.mark.parametrize("subtype", ["plain", "html"])
def test_text_is_encoded_as_email_message_encodes_it(text: str, subtype: str) -> None:
    ours = new_part()
    set_text(ours, text, subtype)
    stdlib = EmailMessage()
    stdlib.set_content(text, subtype=subtype)

    assert ours.items() == [
        ("Content-Type", f'text/{subtype}; charset="utf-8"'),
        ("Content-Transfer-Encoding", stdlib["Content-Transfer-Encoding"]),
    ]
    assert ours.get_payload() == stdlib.get_payload()


def messages() -> dict[str, Message]:
    """One of every kind of email, with the values that take each path through folding."""
    sender, recipient = "Exporter <exports@exporter.local>", "user@example.com"
    export_id = "6c1f5a2e-0000-4000-8000-000000000001"
    export = functools.partial(
        build_export_message, sender=sender, recipient=recipient, export_id=export_id
    )
    csv = b"a,b\r\n" * 40
    link = DownloadLink(
        url="https://exports.example.com/v1/downloads/" + "t" * 200,
        expires_at=datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC),
        file_name="memberships-2026-12-01.csv.gz",
        row_count=250_000,
        byte_size=42 * 1024**2,
    )
    schedule = ScheduleNotice(
        pause_url="https://exports.example.com/v1/schedule-pause/" + "p" * 300,
        time_zone="Europe/Berlin",
        next_run_at=datetime.datetime(2027, 3, 1, 2, 14, tzinfo=datetime.UTC),
    )
    return {
        "attached": export(
            attachment=ExportAttachment(csv, "memberships-2026-12-01.csv", 40, len(csv)),
            recipient_name="Zoe",
            sha256="ab" * 32,
            page_url="https://exports.example.com/",
        ),
        "streamed": export(
            attachment=ExportAttachment(io.BytesIO(csv), "m.csv", 40, len(csv)),
        ),
        "not text": export(
            attachment=ExportAttachment(b"PAR1", "m.parquet", 1, 4, ("application", "x-parquet")),
        ),
        "file name beyond ascii": export(
            attachment=ExportAttachment(csv, "Zürich 東京 memberships.csv", 40, len(csv)),
        ),
        "linked": export(link=link),
        "scheduled, name beyond ascii": export(
            attachment=ExportAttachment(csv, "m.csv", 40, len(csv)),
            recipient_name="Zoë Ångström 山田",
            schedule=schedule,
        ),
        "failure notice": build_failure_message(
            sender=sender, recipient=recipient, export_id=export_id, reason="the database was away."
        ),
        "sender beyond ascii": build_failure_message(
            sender="Exportér <exports@exporter.local>",
            recipient=recipient,
            export_id=export_id,
            reason="r.",
        ),
        "address beyond ascii": build_failure_message(
            sender=sender, recipient="josé@exämple.com", export_id=export_id, reason="r."
        ),
    }


MESSAGES = messages()


def servers(*, ascii_only: bool) -> list[bool]:
    """SMTPUTF8 or not (a non-ASCII address is only ever sent with SMTPUTF8: smtp.py)."""
    return [False, True] if ascii_only else [True]


@pytest.mark.parametrize(
    ("message", "utf8"),
    [
        pytest.param(message, utf8, id=f"{kind}-{'smtputf8' if utf8 else 'ascii'}")
        for kind, message in MESSAGES.items()
        for utf8 in servers(ascii_only=str(message["To"]).isascii())
    ],
)
@pytest.mark.parametrize("cte_type", ["8bit", "7bit"])
def test_flatten_writes_what_bytes_generator_writes(
    message: Message, utf8: bool, cte_type: str
) -> None:
    generated = io.BytesIO()
    wire = WIRE.clone(linesep="\r\n", utf8=utf8, cte_type=cte_type)  # type: ignore[call-arg]
    BytesGenerator(generated, policy=wire).flatten(message)

    assert flatten(message, utf8=utf8, cte_type=cte_type) == generated.getvalue()


def test_bcc_never_goes_on_the_wire() -> None:
    def notice() -> Message:
        return build_failure_message(
            sender="exports@exporter.local",
            recipient="user@example.com",
            export_id="e",
            reason="r.",
        )

    plain, hidden = notice(), notice()
    hidden["Bcc"] = "audit@exporter.local"
    for message in (plain, hidden):
        del message["Date"], message["Message-ID"]

    assert flatten(hidden, utf8=False, cte_type="8bit") == flatten(
        plain, utf8=False, cte_type="8bit"
    )
    assert hidden["Bcc"] == "audit@exporter.local"  # the message itself keeps it


HEADERS = [
    ("Subject", "Your memberships export is ready (1,000 rows)"),
    ("From", "Exporter <exports@exporter.local>"),
    ("From", "Exportér Zürich <exports@exporter.local>"),
    ("To", "josé@exämple.com"),
    ("Content-Type", 'multipart/mixed; boundary="===============5928231674602600763=="'),
    ("Content-Type", 'multipart/alternative; boundary="===============1863881863213310485=="'),
    ("Content-Disposition", "attachment; filename*=utf-8''Z%C3%BCrich%20%E6%9D%B1%E4%BA%AC.csv"),
    ("Content-Disposition", 'attachment; filename="memberships-2026-12-01.csv"'),
    ("List-Unsubscribe", "<https://exports.example.com/v1/schedule-pause/" + "p" * 300 + ">"),
    ("Subject", "a subject " * 12),
]


@pytest.mark.parametrize(
    ("name", "value", "utf8"),
    [
        (name, value, utf8)
        for name, value in HEADERS
        for utf8 in servers(ascii_only=name != "To" or value.isascii())
    ],
)
def test_headers_are_folded_as_policy_default_folds_them(name: str, value: str, utf8: bool) -> None:
    smtp = policy.SMTPUTF8 if utf8 else policy.SMTP
    ours = WIRE.clone(linesep="\r\n", utf8=utf8)  # type: ignore[call-arg]
    folded = ours.fold_binary(name, value)
    expected = smtp.fold_binary(name, smtp.header_factory(name, value))

    if utf8 and "filename*=" in value:
        # The one difference: under SMTPUTF8 policy.default writes a non-ASCII file name as
        # it is, we keep its RFC 2231 form (valid everywhere, and the file names we make are
        # ASCII: jobs/produce.py export_file_name). Both read back as the same name.
        assert folded != expected
        assert parsed_header(folded).params == parsed_header(expected).params
        return
    if name == "List-Unsubscribe":
        # On purpose: policy.default writes a long URL list as encoded words, which a
        # receiver looking for "<https://...>" (RFC 2369, 8058) does not decode; ours
        # stands on one line, as it is.
        assert folded == f"{name}: {value}\r\n".encode()
        assert expected.startswith(b"List-Unsubscribe: =?utf-8?q?")
        return
    assert folded == expected


def parsed_header(folded: bytes) -> ParameterizedMIMEHeader:
    name, _, value = folded.decode().partition(": ")
    header = policy.default.header_factory(name, " ".join(value.split()))
    assert isinstance(header, ParameterizedMIMEHeader)
    return header


@pytest.mark.parametrize("line_break", list("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"))
def test_no_character_that_breaks_a_line_is_taken_in_a_header(line_break: str) -> None:
    part = new_part()
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        part["To"] = f"user@example.com{line_break}Bcc: victim@example.com"
    assert part.keys() == []


@pytest.mark.parametrize(
    "size", [0, 1, 2, 3, 56, 57, 58, 57 * 1024 - 1, 57 * 1024, 57 * 1024 + 1, 57 * 2048 + 100]
)
def test_base64_lines_are_the_76_character_lines_of_rfc_2045(size: int) -> None:
    data = os.urandom(size)
    expected = base64.encodebytes(data)  # the stdlib's own 76-character lines, LF ended
    assert base64_lines(data, linesep=b"\n") == expected
    assert base64_lines(data) == expected.replace(b"\n", b"\r\n")
