"""MIME parts put together and written out without the email package's header parsing.

``EmailMessage`` under ``policy.default`` parses every header value it is given, and again
every header it writes (``email.headerregistry``): most of the ~8 ms of CPU an export's
email cost. The parts here are plain ``email.message.Message`` objects under
``WirePolicy``, a ``compat32`` policy, so a header is kept as the string it was set to.
Every value set here is one we made or checked, so it needs no parsing: it is written as
it is when it fits on a line, and only a value that needs encoded words (non-ASCII without
SMTPUTF8) or folding we do not do ourselves goes through ``policy.default``'s own header
classes, which write it as they always did. Text gets the transfer encoding
``email.contentmanager`` would give it. What goes on the wire is therefore what
``EmailMessage`` wrote: tests/mail/test_messages.py pins every kind of email, and
tests/mail/test_mime.py checks each step against the email package's own.

``flatten`` writes a message for SMTP; ``base64_lines`` encodes a file's bytes as its
attachment's lines.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import re
import secrets
import struct
import sys
from collections.abc import Iterable, Iterator
from email import policy as email_policy
from email import quoprimime
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.policy import Compat32, EmailPolicy
from io import BytesIO

# RFC 5322's line length: a header (or text line) longer than this is folded (or encoded).
MAX_LINE = 78
# Every character str.splitlines() breaks at: policy.default refuses them in a header value
# (a line break would start a header of the sender's choosing), and so does WirePolicy.
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# RFC 5322's hard limit for a line, CRLF not counted.
MAX_LINE_HARD = 998
# Headers written on one line however long (up to MAX_LINE_HARD): their value has no
# whitespace to fold at, and receivers read it as it stands.
_UNFOLDED = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
# Headers whose value is a MIME type or disposition with parameters: folded at "; ".
_PARAMETERIZED = frozenset({"content-type", "content-disposition"})


class WirePolicy(Compat32):
    """``compat32`` (header values stored and read back as the strings they were set to)
    that refuses line breaks in a header value, writes a value that fits on a line as it
    is (UTF-8 as it is when ``utf8``, for SMTPUTF8), folds a MIME header's parameters, and
    leaves anything else to ``policy.default``'s header classes (encoded words, folding),
    as ``EmailMessage`` would have written it."""

    utf8 = False
    mangle_from_ = False  # as policy.default: a body line starting "From " stays as it is

    def header_store_parse(self, name: str, value: str) -> tuple[str, str]:
        if _LINE_BREAK.search(value):
            raise ValueError("Header values may not contain linefeed or carriage return characters")
        return name, value

    def fold(self, name: str, value: str) -> str:
        return self._folded(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        return self._folded(name, value).encode("utf-8" if self.utf8 else "ascii")

    def _folded(self, name: str, value: str) -> str:
        line = f"{name}: {value}"
        if len(line) <= MAX_LINE and (self.utf8 or line.isascii()):
            return line + self.linesep
        if name.lower() in _UNFOLDED and line.isascii() and len(line) <= MAX_LINE_HARD:
            # A URL list is read by receivers as it stands (RFC 2369, 8058): never as
            # encoded words, which is how policy.default writes what it cannot fold.
            return line + self.linesep
        if name.lower() in _PARAMETERIZED and line.isascii():
            lines = _fold_at_parameters(line)
            if lines is not None:
                return self.linesep.join(lines) + self.linesep
        smtp = _email_policy(utf8=self.utf8, linesep=self.linesep)
        return str(smtp.header_factory(name, value).fold(policy=smtp))


def _fold_at_parameters(line: str) -> list[str] | None:
    """``line`` folded before its parameters (``type; a=1;`` / `` b=2``), as policy.default
    folds a MIME header whose parameters each fit on a line; None when one does not."""
    pieces = line.split("; ")
    lines = [pieces[0]]
    for piece in pieces[1:]:
        if len(lines[-1]) + 2 + len(piece) <= MAX_LINE:
            lines[-1] += "; " + piece
        else:
            lines[-1] += ";"
            lines.append(" " + piece)
    return lines if all(len(line) <= MAX_LINE for line in lines) else None


def _email_policy(*, utf8: bool, linesep: str) -> EmailPolicy[EmailMessage]:
    smtp = email_policy.SMTPUTF8 if utf8 else email_policy.SMTP
    return smtp if smtp.linesep == linesep else smtp.clone(linesep=linesep)


# The policy of every part built here (as_bytes() and as_string() write LF line ends, as the
# email package's default does); ``flatten`` writes CRLF for SMTP.
WIRE = WirePolicy()


def new_part() -> Message:
    """An empty part under ``WIRE``."""
    return Message(policy=WIRE)


def set_text(part: Message, text: str, subtype: str) -> None:
    """Make ``part`` text/``subtype`` in UTF-8, in the transfer encoding ``EmailMessage``'s
    ``set_content`` would choose."""
    cte, payload = _encode_text(text)
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(payload)


def set_multipart(part: Message, subtype: str, parts: list[Message]) -> None:
    """Make ``part`` multipart/``subtype`` of ``parts``, with a boundary none of them holds."""
    part["Content-Type"] = f'multipart/{subtype}; boundary="{_boundary(parts)}"'
    part.set_payload(parts)  # type: ignore[arg-type]  # a list of parts is a multipart's payload


def set_attachment(
    part: Message, payload: str, *, maintype: str, subtype: str, file_name: str
) -> None:
    """Make ``part`` an attachment named ``file_name`` whose content is ``payload``, its
    base64 lines; text is UTF-8. Headers in the order ``add_attachment`` wrote them."""
    content_type = f"{maintype}/{subtype}"
    if maintype == "text":
        # add_attachment's set_param("charset") moved Content-Type after the others.
        part["Content-Transfer-Encoding"] = "base64"
        part.add_header("Content-Disposition", "attachment", filename=file_name)
        part["Content-Type"] = f'{content_type}; charset="utf-8"'
    else:
        part["Content-Type"] = content_type
        part["Content-Transfer-Encoding"] = "base64"
        part.add_header("Content-Disposition", "attachment", filename=file_name)
    part.set_payload(payload)


def _encode_text(text: str) -> tuple[str, str]:
    """The transfer encoding and body of ``text`` in UTF-8, chosen as
    ``email.contentmanager`` chooses them under ``policy.default`` (LF line ends, 78
    characters, 8bit allowed): as it is when every line fits, else quoted-printable, or
    base64 when its first lines would come out shorter that way."""
    lines = text.encode("utf-8").splitlines()
    body = b"\n".join(lines) + b"\n"
    if max((len(line) for line in lines), default=0) <= MAX_LINE:
        if body.isascii():
            return "7bit", body.decode("ascii")
        return "8bit", body.decode("ascii", "surrogateescape")
    sniff = b"\n".join(lines[:10]) + b"\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), MAX_LINE)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        return "base64", base64_lines(body, linesep=b"\n").decode("ascii")
    if len(lines) <= 10:
        return "quoted-printable", sniff_qp
    # The email package encodes the whole body again; quoted-printable encodes each line on
    # its own, so the first ten lines' encoding is kept and the rest encoded after them.
    rest = b"\n".join(lines[10:]) + b"\n"
    return "quoted-printable", sniff_qp + quoprimime.body_encode(rest.decode("latin-1"), MAX_LINE)


def _boundary(parts: Iterable[Message]) -> str:
    """A boundary as the email package makes them, and that no line of ``parts`` starts
    with (RFC 2046)."""
    bodies = list(_leaf_payloads(parts))
    while True:
        boundary = "=" * 15 + f"{secrets.randbelow(sys.maxsize):019d}" + "=="
        if not any("--" + boundary in body for body in bodies):
            return boundary


def _leaf_payloads(parts: Iterable[Message | str]) -> Iterator[str]:
    for part in parts:
        payload = part if isinstance(part, str) else part.get_payload()
        if isinstance(payload, list):
            yield from _leaf_payloads(payload)
        elif isinstance(payload, str):
            yield payload


# Bytes per base64 line: 57 make the 76 characters RFC 2045 allows.
LINE_BYTES = 57
_LINES_PER_CUT = 1024
# Cuts 1,024 base64 lines at once, in C (a Python loop over 76-character slices cost more
# than the encoding itself).
_CUT = struct.Struct("76s" * _LINES_PER_CUT)


def base64_lines(data: bytes, *, linesep: bytes = b"\r\n") -> bytes:
    """``data`` in base64, in 76-character lines each ending with ``linesep`` (as the email
    package writes an attachment)."""
    out = []
    step = LINE_BYTES * _LINES_PER_CUT
    for start in range(0, len(data), step):
        encoded = base64.b64encode(data[start : start + step])
        full, rest = divmod(len(encoded), 76)
        cut = _CUT if full == _LINES_PER_CUT else struct.Struct("76s" * full)
        lines = list(cut.unpack_from(encoded))
        if rest:
            lines.append(encoded[-rest:])
        lines.append(b"")
        out.append(linesep.join(lines))
    return b"".join(out)


def flatten(message: Message, *, utf8: bool, cte_type: str) -> bytes:
    """``message`` (built under ``WIRE``) as SMTP's DATA carries it, before dot-stuffing: CRLF
    line ends, non-ASCII headers as UTF-8 when ``utf8`` (SMTPUTF8), 8bit text re-encoded
    when ``cte_type`` is 7bit (no 8BITMIME), no Bcc.

    Written here, part by part, as the email package's ``BytesGenerator`` writes it under
    the same policy (tests/mail/test_mime.py compares the two byte for byte) at a fraction
    of its cost; 8bit text for a server without 8BITMIME is left to the generator, which
    re-encodes it as it always did.
    """
    policy = _smtp_policy(utf8, cte_type)
    if "Bcc" in message or "Resent-Bcc" in message:
        # Never on the wire, as aiosmtplib's flatten_message (the envelope has them).
        message = copy.copy(message)
        del message["Bcc"], message["Resent-Bcc"]
    if cte_type == "7bit" and any(
        p.get("Content-Transfer-Encoding") == "8bit" for p in message.walk()
    ):
        out = BytesIO()
        BytesGenerator(out, policy=policy).flatten(message)
        return out.getvalue()
    chunks: list[bytes] = []
    _write(message, policy, chunks)
    return b"".join(chunks)


_ANY_LINE_END = re.compile("\r\n|\r|\n")
# As set_multipart writes it (and Message.set_boundary rewrites it): quoted.
_BOUNDARY_PARAM = re.compile(r'boundary="([^"]+)"')


@functools.cache
def _smtp_policy(utf8: bool, cte_type: str) -> WirePolicy:
    """``WIRE`` with SMTP's CRLF line ends, for a server with SMTPUTF8 or without, with
    8BITMIME or without."""
    # utf8 is WirePolicy's own attribute (clone() takes any); typeshed knows only the base's.
    return WIRE.clone(linesep="\r\n", utf8=utf8, cte_type=cte_type)  # type: ignore[call-arg]


def _write(part: Message, policy: WirePolicy, out: list[bytes]) -> None:
    """``part``'s headers, a blank line and its body, as ``BytesGenerator`` writes them."""
    out.extend(policy.fold_binary(name, value) for name, value in part.raw_items())
    out.append(b"\r\n")
    payload = part.get_payload()
    if isinstance(payload, list):
        boundary = _BOUNDARY_PARAM.search(part.get("Content-Type", ""))
        assert boundary is not None  # set_multipart sets one
        dashes = b"--" + boundary[1].encode("ascii")
        for i, sub in enumerate(payload):
            out.append(b"\r\n" + dashes + b"\r\n" if i else dashes + b"\r\n")
            _write(sub, policy, out)
        out.append(b"\r\n" + dashes + b"--\r\n")
    elif isinstance(payload, str):
        body = _ANY_LINE_END.sub("\r\n", payload)
        # 8bit text: get_payload() decoded it with the part's charset; these are its bytes.
        out.append(body.encode("ascii" if body.isascii() else part.get_content_charset("ascii")))
