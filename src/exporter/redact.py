"""Last line of defence for logs: mask anything shaped like a credential before it is written.

Code should never log secrets (settings hold them as ``SecretStr``; handlers log reasons,
not tokens). This processor catches what slips through anyway, including messages and
tracebacks from libraries: JWTs, PEM blocks, passwords in URLs, and values under names that
say they are secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"
_SECRET_NAMES = re.compile(
    r"(pass(word)?|secret|token|authorization|private_key|api_key|credential|cookie|dsn)$",
    re.IGNORECASE,
)
_PATTERNS = (
    # JSON Web Tokens (header.payload.signature, base64url, header starts with '{"').
    (re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*"), "[jwt]"),
    (re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.DOTALL), "[pem]"),
    # scheme://user:password@host
    (re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE), r"\g<pre>***@"),
    (re.compile(r"(?P<pre>Bearer\s+)[\w.~+/-]+=*", re.IGNORECASE), r"\g<pre>[redacted]"),
    # Download links carry their credential in the path: whatever follows the prefix,
    # even a truncated or mangled token (the route template itself stays readable).
    (re.compile(r"(?P<pre>/v1/downloads/)(?!\{token\})[^\s\"'?#/]+"), r"\g<pre>[redacted]"),
    # So do the one-click pause links of scheduled exports' emails.
    (
        re.compile(r"(?P<pre>/v1/schedule-pause/)(?!\{token\})[^\s\"'?#/]+"),
        r"\g<pre>[redacted]",
    ),
)


def redact_text(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_NAMES.search(k) else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: run it after exceptions are formatted, before rendering."""
    for key, value in list(event_dict.items()):
        if _SECRET_NAMES.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value)
    return event_dict
