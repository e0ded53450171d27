"""MIME parts without header parsing (mail/mime.py): base64 lines, folding, the policy."""

from __future__ import annotations

import base64
import os

import pytest

from exporter.mail.mime import base64_lines


@pytest.mark.parametrize(
    "size", [0, 1, 2, 3, 56, 57, 58, 57 * 1024 - 1, 57 * 1024, 57 * 1024 + 1, 57 * 2048 + 100]
)
def test_base64_lines_are_the_76_character_lines_of_rfc_2045(size: int) -> None:
    data = os.urandom(size)
    expected = base64.encodebytes(data)  # the stdlib's own 76-character lines, LF ended
    assert base64_lines(data, linesep=b"\n") == expected
    assert base64_lines(data) == expected.replace(b"\n", b"\r\n")
