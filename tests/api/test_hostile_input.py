"""A hostile-input corpus, spoken as raw bytes over a socket to a real ``exporter api``
process: aiohttp's HTTP parser is exercised as in production, not only the handlers.

Every refusal must be a problem+json with a stable code, never a 5xx, echo nothing of the
request (each request carries a marker that must not come back), and leave one log line
at info/warning without a traceback.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.auth import Scope, SigningKey, TokenService, TokenType
from exporter.config import Settings
from exporter.models import utcnow
from tests.api.live import LiveApi, RawResponse, exchange, request_bytes, running_api

TIMEOUT_S = 1.5  # body and header deadlines of the process under test (default 10)
MARK = "mark" + secrets.token_hex(6)


@pytest.fixture(name="api", scope="module")
def _fix_api(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    log = tmp_path_factory.mktemp("hostile") / "api.log"
    env = {
        "EXPORTER_API__BODY_TIMEOUT_S": str(TIMEOUT_S),
        "EXPORTER_API__HEADER_TIMEOUT_S": str(TIMEOUT_S),
    }
    with running_api(base_settings, log, env) as api:
        yield api


@pytest.fixture(name="access_token", scope="module")
def _fix_access_token(base_settings: Settings, signing_key: SigningKey) -> str:
    tokens = TokenService(base_settings.jwt, signing_key)
    # A user id of its own: listing needs no user record.
    return tokens.issue_pair(
        "hostile-" + secrets.token_hex(4), list(Scope), now=utcnow()
    ).access_token


def assert_refused(response: RawResponse | None, status: int, code: str) -> dict[str, object]:
    assert response is not None, "the server closed the connection without answering"
    assert response.status == status, response.raw[:2000]
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert {"type", "title", "detail"} <= set(body)
    assert MARK.encode() not in response.raw, "the request was echoed back"
    assert response.headers.get("x-content-type-options") == "nosniff"
    return dict(body)


def log_since(api: LiveApi, start: int) -> list[dict[str, object]]:
    time.sleep(0.2)  # let the process flush
    return api.log_lines()[start:]


def assert_quiet_log(lines: list[dict[str, object]]) -> None:
    """No error-level line and no traceback; nothing of the marker."""
    for line in lines:
        text = json.dumps(line)
        assert line.get("level") not in {"error", "critical", "text"}, text
        assert "Traceback" not in text and "exception" not in line, text
        assert MARK not in text, text


# --- aiohttp's parser: refusals before any middleware -------------------------------------

PARSER_CASES = {
    "header value too long": (
        request_bytes("GET", "/healthz", headers={"X-Long": MARK + "a" * 9000}),
        431,
        "header_too_large",
    ),
    "header name too long": (
        request_bytes("GET", "/healthz", headers={MARK + "n" * 9000: "x"}),
        431,
        "header_too_large",
    ),
    "request line too long": (
        request_bytes("GET", f"/healthz?q={MARK}{'a' * 17000}"),
        414,
        "request_line_too_long",
    ),
    "too many headers": (
        request_bytes("GET", "/healthz", headers={f"X-{MARK}-{i}": "1" for i in range(200)}),
        431,
        "too_many_headers",
    ),
    "content-length not a number": (
        request_bytes("POST", "/v1/auth/token", headers={"Content-Length": MARK}, body=b"{}"),
        400,
        "bad_content_length",
    ),
    "content-length twice, differing": (
        request_bytes("POST", "/v1/auth/token", extra_head=b"Content-Length: 3\r\n", body=b"{}"),
        400,
        "bad_content_length",
    ),
    "content-length with chunked": (
        request_bytes(
            "POST",
            "/v1/auth/token",
            headers={"Content-Length": "2", "Transfer-Encoding": "chunked"},
            body=b"2\r\n{}\r\n0\r\n\r\n",
        ),
        400,
        "content_length_with_chunked",
    ),
    "unknown transfer-encoding": (
        request_bytes(
            "POST", "/v1/auth/token", extra_head=f"Transfer-Encoding: {MARK}\r\n".encode()
        ),
        400,
        "bad_transfer_encoding",
    ),
    "bad chunk size": (
        request_bytes(
            "POST",
            "/v1/auth/token",
            headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            body=f"{MARK}\r\n{{}}\r\n0\r\n\r\n".encode(),
        ),
        400,
        "bad_transfer_encoding",
    ),
    "method with bad characters": (
        f"G(T{MARK} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        400,
        "bad_http_method",
    ),
    "unknown version": (
        f"GET /healthz?{MARK} HTTP/7.3\r\nHost: x\r\n\r\n".encode(),
        400,
        "bad_request_line",
    ),
    "not HTTP at all": (f"{MARK}\r\n\r\n".encode(), 400, "bad_http_method"),
    "header line without colon": (
        request_bytes("GET", "/healthz", extra_head=f"{MARK} no colon\r\n".encode()),
        400,
        "invalid_header",
    ),
    "space before colon": (
        request_bytes("GET", "/healthz", extra_head=f"X-{MARK} : 1\r\n".encode()),
        400,
        "invalid_header",
    ),
    "control byte in a header value": (
        request_bytes("GET", "/healthz", extra_head=f"X-A: {MARK}\x01\r\n".encode()),
        400,
        "invalid_header",
    ),
    "bare LF line ends": (
        f"GET /healthz HTTP/1.1\nHost: x\nX-A: {MARK}\n\n".encode(),
        400,
        "bad_request_line",
    ),
}


@pytest.mark.parametrize("case", list(PARSER_CASES))
def test_the_parser_refusals_are_problems_that_echo_nothing(api: LiveApi, case: str) -> None:
    start = len(api.log_lines())
    data, status, code = PARSER_CASES[case]

    response = exchange(api, data)

    assert_refused(response, status, code)
    lines = log_since(api, start)
    assert_quiet_log(lines)
    rejected = [line for line in lines if line.get("event") == "http.rejected"]
    assert len(rejected) == 1 and rejected[0]["level"] == "warning", lines
    assert rejected[0]["code"] == code


# --- the application: inputs that used to reach a 500 --------------------------------------


def post_json(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    return request_bytes(
        "POST", path, headers={"Content-Type": "application/json", **(headers or {})}, body=body
    )


APP_CASES = {
    "JSON nested past the recursion limit": (
        post_json("/v1/auth/token", b"[" * 8000 + b"]" * 8000),
        400,
        "json_too_deep",
    ),
    "JSON objects nested past the recursion limit": (
        post_json("/v1/auth/token", b'{"a":' * 2500 + b"1" + b"}" * 2500),
        400,
        "json_too_deep",
    ),
    "JSON nested deeper than any body of ours": (
        post_json("/v1/auth/token", b'{"email": ' + b"[" * 40 + b"]" * 40 + b"}"),
        400,
        "json_too_deep",
    ),
    "lone surrogate reaching argon2": (
        post_json("/v1/auth/token", b'{"email": "a@example.com", "password": "\\ud800x"}'),
        400,
        "invalid_json_text",
    ),
    "lone surrogate reaching token parsing": (
        post_json("/v1/auth/refresh", b'{"refresh_token": "\\udc00.\\udfff.x"}'),
        400,
        "invalid_json_text",
    ),
    "lone surrogate in a key": (
        post_json("/v1/auth/logout", b'{"\\ud83d": 1}'),
        400,
        "invalid_json_text",
    ),
    "NaN is not JSON": (
        post_json("/v1/auth/token", b'{"email": NaN, "password": "x"}'),
        400,
        "malformed_json",
    ),
    "body that is not UTF-8": (
        post_json("/v1/auth/token", b'{"email": "\xff\xfe", "password": "x"}'),
        400,
        "malformed_json",
    ),
    "duplicate JSON keys": (
        post_json(
            "/v1/auth/token",
            b'{"email": "a@example.com", "password": "x", "password": "y"}',
        ),
        400,
        "duplicate_json_key",
    ),
    "duplicate JSON keys, hostile name": (
        post_json("/v1/auth/logout", f'{{"<{MARK}>": 1, "<{MARK}>": 2}}'.encode()),
        400,
        "duplicate_json_key",
    ),
    "Authorization bytes that are not UTF-8": (
        request_bytes("GET", "/v1/exports", extra_head=b"Authorization: Bearer \xff\xfe\xfd\r\n"),
        401,
        "invalid_token",
    ),
    "Authorization that is UTF-8 but not ASCII": (
        request_bytes("GET", "/v1/exports", headers={"Authorization": "Bearer é.ü.ö"}),
        401,
        "invalid_token",
    ),
    "X-Request-ID bytes that are not UTF-8": (
        request_bytes("GET", "/healthz?x=1&x=2", extra_head=b"X-Request-ID: \xff\xfe\r\n"),
        400,
        "repeated_query_parameter",
    ),
    # Without a token nothing of the request is read: the token is checked first (the same
    # requests with a token: test_malformed_requests_with_a_token_are_named below).
    "repeated query parameter, no token": (
        request_bytes("GET", "/v1/exports?limit=1&limit=2"),
        401,
        "missing_token",
    ),
    "unknown Expect (aiohttp answers it before any middleware)": (
        request_bytes("GET", "/healthz", headers={"Expect": f"<{MARK}>"}),
        417,
        "expectation_failed",
    ),
    "path bytes that are not UTF-8, no token": (
        request_bytes("GET", f"/v1/exports/%ff%fe{MARK}"),
        401,
        "missing_token",
    ),
}


@pytest.mark.parametrize("case", list(APP_CASES))
def test_hostile_bodies_and_headers_are_4xx_problems(api: LiveApi, case: str) -> None:
    start = len(api.log_lines())
    data, status, code = APP_CASES[case]

    body = assert_refused(exchange(api, data), status, code)

    assert_quiet_log(log_since(api, start))
    if code == "duplicate_json_key" and "password" in str(data):
        assert "'password'" in str(body["detail"])  # a plain field name is named


def test_malformed_requests_with_a_token_are_named(api: LiveApi, access_token: str) -> None:
    auth = {"Authorization": f"Bearer {access_token}"}
    body = assert_refused(
        exchange(api, request_bytes("GET", "/v1/exports?cursor=a&cursor=b", headers=auth)),
        400,
        "repeated_query_parameter",
    )
    assert "'cursor'" in str(body["detail"])
    start = len(api.log_lines())
    assert_refused(
        exchange(api, request_bytes("GET", f"/v1/exports/%ff%fe{MARK}", headers=auth)),
        422,
        "validation_failed",
    )
    assert_quiet_log(log_since(api, start))


def _old_style_cursor(user_id: str, job_id: str, created_at: str) -> str:
    key = {"created_at": {"S": created_at}, "job_id": {"S": job_id}, "user_id": {"S": user_id}}
    raw = json.dumps(key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_crafted_cursor_with_the_callers_own_id_is_a_400_not_an_outage(
    api: LiveApi, access_token: str, base_settings: Settings, signing_key: SigningKey
) -> None:
    claims = TokenService(base_settings.jwt, signing_key).verify(
        access_token, expected_type=TokenType.ACCESS
    )
    auth = {"Authorization": f"Bearer {access_token}"}
    crafted = [
        _old_style_cursor(claims.subject, "", ""),  # DynamoDB: empty key attribute
        _old_style_cursor(claims.subject, "x", "not a time"),
        "1." + _old_style_cursor(claims.subject, "x", "y") + ".AAAAAAAAAAAAAAAAAAAAAA",
        "1..",
    ]
    for cursor in crafted:
        start = len(api.log_lines())
        response = exchange(api, request_bytes("GET", f"/v1/exports?cursor={cursor}", headers=auth))
        assert_refused(response, 400, "invalid_cursor")
        assert_quiet_log(log_since(api, start))


# --- slow and vanishing clients -------------------------------------------------------------


def test_a_slow_body_gets_408_within_the_deadline(api: LiveApi) -> None:
    head = request_bytes(
        "POST",
        "/v1/auth/token",
        headers={"Content-Type": "application/json", "Content-Length": "40"},
    )
    started = time.monotonic()

    # One byte every 0.3 s: 40 bytes would take 12 s.
    response = exchange(api, [head] + [b" "] * 40, pause_s=0.3, timeout_s=15)

    elapsed = time.monotonic() - started
    assert_refused(response, 408, "body_timeout")
    assert elapsed < TIMEOUT_S + 2.5, elapsed


def test_slow_headers_get_408_within_the_deadline(api: LiveApi) -> None:
    start = len(api.log_lines())
    started = time.monotonic()
    trickle = [b"GET /healthz HTTP/1.1\r\n"] + [
        b"X-Slow: " + MARK.encode()[i : i + 1] for i in range(12)
    ]

    response = exchange(api, trickle, pause_s=0.3, timeout_s=15)

    elapsed = time.monotonic() - started
    assert_refused(response, 408, "header_timeout")
    assert elapsed < TIMEOUT_S + 2.5, elapsed
    assert_quiet_log(log_since(api, start))


def test_an_idle_keep_alive_connection_is_not_a_slow_header(api: LiveApi) -> None:
    # Two requests on one connection with a pause longer than the head deadline between.
    first = request_bytes("GET", "/healthz", headers={"Connection": "keep-alive"})
    second = request_bytes("GET", "/healthz")
    with socket.create_connection((api.host, api.port), timeout=10) as sock:
        sock.sendall(first)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(TIMEOUT_S + 0.5)
        sock.sendall(second)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def _http_counts(api: LiveApi) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{api.host}:{api.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"exporter_http_requests_total\{(.*)\} (\S+)", line)
        if m and 'route="/v1/auth/token"' in m.group(1):
            status = re.search(r'status="(\d+)"', m.group(1))
            assert status
            counts[status.group(1)] = counts.get(status.group(1), 0) + float(m.group(2))
    return counts


def test_a_client_leaving_mid_body_is_a_499_not_a_500(api: LiveApi) -> None:
    before = _http_counts(api)
    start = len(api.log_lines())
    head = request_bytes(
        "POST",
        "/v1/auth/token",
        headers={"Content-Type": "application/json", "Content-Length": "100"},
    )

    assert exchange(api, [head, b'{"email": '], close_after_send=True) is None

    deadline = time.monotonic() + 5
    while _http_counts(api).get("499", 0) <= before.get("499", 0):
        assert time.monotonic() < deadline, _http_counts(api)
        time.sleep(0.1)
    after = _http_counts(api)
    assert after.get("500", 0) == before.get("500", 0)
    lines = log_since(api, start)
    assert_quiet_log(lines)
    assert any(line.get("event") == "http.client_disconnected" for line in lines), lines


def test_the_api_still_answers_after_the_corpus(api: LiveApi) -> None:
    response = exchange(api, request_bytes("GET", "/healthz"))
    assert response is not None and response.status == 200
    assert not [line for line in api.log_lines() if line.get("level") in {"error", "critical"}]


def test_the_production_server_is_the_one_serving(api: LiveApi) -> None:
    """The seam is on ``exporter api``'s path: a parser refusal is a problem, as above,
    and aiohttp's own logger wrote nothing (it would say 'Error handling request')."""
    response = exchange(api, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARK.encode())
    assert_refused(response, 400, "bad_http_method")
    assert "Error handling request" not in Path(api.log_path).read_text(errors="replace")
