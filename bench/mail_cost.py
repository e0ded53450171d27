"""What an export's email costs the worker in CPU, stage by stage, next to the way it was
built before issue 15 (``EmailMessage`` under ``policy.default``) in the same run.

    python -m bench.mail_cost [--emails 300] [--rounds 5] [--attachment-kb 140]

The email of a 1,000-row export: its file attached and read from a file while it is sent
(a BytesIO here, as the worker's spooled file), with the user's name, the checksum and the
page's link. The stages are those ``Mailer.send`` runs: build (``build_export_message``),
flatten (``mime.flatten``; before, aiosmtplib's ``flatten_message``) and wire
(``wire_chunks`` consumed: the placeholder replaced by the file's base64 lines, made
transparent). CPU is ``time.process_time`` over a stage for all the emails divided by their
number; each round runs both ways (in turns, first one then the other first) and the table
shows the medians of the rounds. No network, no servers. On a busy machine the numbers are
indicative; the ratio holds better.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import re
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import IO, TypeVar

from aiosmtplib.email import flatten_message

from exporter.mail import mime
from exporter.mail.messages import (
    EXPORT_ID_HEADER,
    KIND_EXPORT,
    KIND_HEADER,
    ExportAttachment,
    build_export_message,
    export_texts,
)
from exporter.mail.smtp import wire_chunks
from exporter.models import utcnow

SENDER = "Exporter <exports@exporter.local>"
RECIPIENT = "someone@example.com"
NAME = "Zoë Example"
FILE_NAME = "memberships-2026-12-01.csv"
ROWS = 1_000
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
PAGE_URL = "https://exports.example.com/"
STAGES = ("build", "flatten", "wire")


def csv_like(size: int) -> bytes:
    """``size`` bytes that look like the export's CSV (what they are does not change the cost)."""
    row = b"6c1f5a2e-0000-4000-8000-000000000001,pro,active,2026-01-01T00:00:00Z,12.50,EUR\r\n"
    return (row * (size // len(row) + 1))[:size]


def attachment(source: IO[bytes]) -> ExportAttachment:
    size = source.seek(0, 2)
    return ExportAttachment(content=source, file_name=FILE_NAME, row_count=ROWS, byte_size=size)


def build_now(source: IO[bytes], export_id: str) -> Message:
    return build_export_message(
        sender=SENDER,
        recipient=RECIPIENT,
        export_id=export_id,
        attachment=attachment(source),
        recipient_name=NAME,
        sha256=SHA256,
        page_url=PAGE_URL,
    )


def flatten_now(message: Message) -> bytes:
    return mime.flatten(message, utf8=False, cte_type="8bit")


def wire_now(flat: bytes, message: Message) -> bytes:
    return b"".join(wire_chunks(flat, message)[1])


# The baseline: the same email as it was made before issue 15, kept here to measure against.
_PLACEHOLDER = "exporter-attachment:"
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


def build_before(source: IO[bytes], export_id: str) -> tuple[EmailMessage, bytes]:
    """``EmailMessage`` under ``policy.default``: set_content, add_alternative,
    add_attachment of the placeholder that stood for the file; the email and the
    placeholder."""
    texts = export_texts(
        attachment(source),
        export_id=export_id,
        recipient_name=NAME,
        sha256=SHA256,
        page_url=PAGE_URL,
    )
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = texts.subject
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(domain="exporter.local")
    message[EXPORT_ID_HEADER] = export_id
    message[KIND_HEADER] = KIND_EXPORT
    message.set_content(texts.text)
    message.add_alternative(texts.html, subtype="html")
    marker = (_PLACEHOLDER + uuid.uuid4().hex).encode()
    message.add_attachment(
        marker, maintype="text", subtype="csv", filename=FILE_NAME, params={"charset": "utf-8"}
    )
    return message, marker


def flatten_before(message: EmailMessage) -> bytes:
    return flatten_message(message, utf8=False, cte_type="8bit")


def wire_before(flat: bytes, marker: bytes, source: IO[bytes]) -> bytes:
    """As ``wire_chunks`` was: the placeholder's line cut out, the file's base64 cut into
    76-character lines by a Python loop."""

    def transparent(data: bytes) -> bytes:
        return _DOT_AT_LINE_START.sub(b"..", _LINE_ENDS.sub(b"\r\n", data))

    before, found, after = flat.partition(base64.b64encode(marker) + b"\r\n")
    assert found

    def chunks() -> Iterator[bytes]:
        yield transparent(before)
        source.seek(0)
        while chunk := source.read(57 * 1024):
            encoded = base64.b64encode(chunk)
            yield b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))
        yield transparent(after)

    return b"".join(chunks())


def same_email(before: bytes, now: bytes) -> None:
    """Both ways give the same email, as a mail client reads it (or AssertionError)."""

    def read(raw: bytes) -> list[tuple[str, list[tuple[str, str]], object]]:
        message = message_from_bytes(_DOT_AT_LINE_START.sub(b"", raw), policy=policy.default)
        return [
            (
                part.get_content_type(),
                [
                    (name, "" if name in ("Date", "Message-ID") else str(value))
                    for name, value in part.items()
                    if not (name == "Content-Type" and part.is_multipart())
                ],
                None if part.is_multipart() else part.get_payload(decode=True),
            )
            for part in message.walk()
        ]

    assert read(before) == read(now), "the baseline and the new email differ"


def one_round(emails: int, source: IO[bytes], *, now_first: bool) -> dict[str, dict[str, float]]:
    """CPU ms per email of each stage, each way."""
    ids = [str(uuid.uuid4()) for _ in range(emails)]

    def stages_now() -> dict[str, float]:
        messages, build_s = timed(lambda: [build_now(source, i) for i in ids])
        flats, flatten_s = timed(lambda: [flatten_now(m) for m in messages])
        _, wire_s = timed(
            lambda: [len(wire_now(f, m)) for f, m in zip(flats, messages, strict=True)]
        )
        return per_email(emails, build_s, flatten_s, wire_s)

    def stages_before() -> dict[str, float]:
        built, build_s = timed(lambda: [build_before(source, i) for i in ids])
        flats, flatten_s = timed(lambda: [flatten_before(m) for m, _ in built])
        _, wire_s = timed(
            lambda: [
                len(wire_before(f, marker, source))
                for f, (_, marker) in zip(flats, built, strict=True)
            ]
        )
        return per_email(emails, build_s, flatten_s, wire_s)

    if now_first:
        now = stages_now()
        return {"now": now, "before": stages_before()}
    before = stages_before()
    return {"before": before, "now": stages_now()}


T = TypeVar("T")


def timed(work: Callable[[], T]) -> tuple[T, float]:
    """What ``work`` returned, and the CPU seconds it took."""
    started = time.process_time()
    value = work()
    return value, time.process_time() - started


def per_email(emails: int, *cpu_s: float) -> dict[str, float]:
    return {stage: 1000 * s / emails for stage, s in zip(STAGES, cpu_s, strict=True)}


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{os.cpu_count()} vCPU {cpu}, Python {platform.python_version()}"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def table(rounds: list[dict[str, dict[str, float]]]) -> list[str]:
    """Medians per stage and way, and their total."""
    median = {
        way: {stage: statistics.median(r[way][stage] for r in rounds) for stage in STAGES}
        for way in ("before", "now")
    }
    lines = [f"{'stage':<8} {'before':>8} {'now':>8}"]
    for stage in STAGES:
        lines.append(f"{stage:<8} {median['before'][stage]:>8.2f} {median['now'][stage]:>8.2f}")
    total = {way: sum(median[way].values()) for way in median}
    lines.append(f"{'total':<8} {total['before']:>8.2f} {total['now']:>8.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--emails", type=int, default=300, help="emails per round and way")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--attachment-kb", type=int, default=140, help="the attached file")
    args = parser.parse_args(argv)

    source = io.BytesIO(csv_like(args.attachment_kb * 1024))
    export_id = str(uuid.uuid4())
    message, marker = build_before(source, export_id)
    before = wire_before(flatten_before(message), marker, source)
    email = build_now(source, export_id)
    same_email(before, wire_now(flatten_now(email), email))
    # Warm up both ways (imports, caches) before anything is timed.
    one_round(min(args.emails, 20), source, now_first=True)

    load_before = load()
    rounds = [one_round(args.emails, source, now_first=r % 2 == 0) for r in range(args.rounds)]
    print(
        f"CPU ms per email: medians of {args.rounds} rounds of {args.emails} emails, "
        f"{args.attachment_kb} KB attached from a file (same email both ways: checked)"
    )
    print("\n".join(table(rounds)))
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}; "
        f"load average {load_before} -> {load()} (1/5/15 min)"
    )


if __name__ == "__main__":
    main()
