"""Property: whatever bytes, headers and JSON arrive at whichever route of a real
``exporter api`` process, the answer is below 500, a 4xx is application/problem+json with a
code, nothing of the request comes back, and ``/healthz`` still answers within 100 ms.

Each example carries a marker (``<mk…>``: not a plain identifier, so not even a field
name may be named back) in a header, the query and the body. ``X-Request-ID`` is left out:
it is echoed by design (printable, at most 128 characters).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.auth import Scope, SigningKey, TokenService
from exporter.config import Settings
from exporter.models import utcnow
from tests.api.live import LiveApi, exchange, request_bytes, running_api

MARK = f"<mk{secrets.token_hex(5)}>"
EXPORT_ID = "6f1c2f3e-1d2b-4c5a-9e8f-0a1b2c3d4e5f"
ROUTES = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/.well-known/jwks.json"),
    ("POST", "/v1/auth/token"),
    ("POST", "/v1/auth/refresh"),
    ("POST", "/v1/auth/logout"),
    ("POST", "/v1/exports"),
    ("GET", "/v1/exports"),
    ("GET", f"/v1/exports/{EXPORT_ID}"),
    ("DELETE", f"/v1/exports/{EXPORT_ID}"),
    ("GET", f"/v1/exports/{EXPORT_ID}/download"),
    ("GET", "/api/docs"),
    ("GET", "/api/docs/openapi.json"),
    ("PUT", "/v1/exports"),
    ("GET", "/v1/nowhere"),
]
HEADER_NAMES = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Accept",
    "Origin",
    "X-Forwarded-For",
    "Content-Encoding",
    "Expect",
    "X-Anything",
]
# Header bytes: anything but CR and LF (those would end the header; other tests cover that).
header_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    # Bodies shaped like ours, with hostile values and a marked key.
    st.fixed_dictionaries(
        {"email": json_values, "password": json_values, "refresh_token": json_values}
    ).map(lambda d: json.dumps(d).encode()),
)


@pytest.fixture(name="api", scope="module")
def _fix_api(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    env = {
        "EXPORTER_API__BODY_TIMEOUT_S": "2",
        # Random examples sign in thousands of times from one address.
        "EXPORTER_LOG_LEVEL": "WARNING",
    }
    with running_api(base_settings, tmp_path_factory.mktemp("prop") / "api.log", env) as api:
        yield api


@pytest.fixture(name="bearer", scope="module")
def _fix_bearer(base_settings: Settings, signing_key: SigningKey) -> str:
    tokens = TokenService(base_settings.jwt, signing_key)
    user = "prop-" + secrets.token_hex(4)
    return tokens.issue_pair(user, list(Scope), now=utcnow()).access_token


def _mark(data: bytes, where: int) -> bytes:
    cut = where % (len(data) + 1)
    return data[:cut] + MARK.encode() + data[cut:]


@pytest.mark.slow
def test_random_requests_never_reach_a_5xx_or_an_echo(
    api: LiveApi, bearer: str, tmp_path: Path
) -> None:
    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        route=st.sampled_from(ROUTES),
        method=st.one_of(st.none(), st.sampled_from(["GET", "POST", "DELETE", "PATCH"])),
        headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_bytes, max_size=5),
        valid_token=st.booleans(),
        json_type=st.booleans(),
        query=st.lists(st.tuples(st.sampled_from(["limit", "cursor", "x"]), st.text(max_size=8))),
        body=bodies,
        where=st.integers(min_value=0, max_value=400),
        marked_header=st.sampled_from(HEADER_NAMES),
    )
    def check(
        route: tuple[str, str],
        method: str | None,
        headers: dict[str, bytes],
        valid_token: bool,
        json_type: bool,
        query: list[tuple[str, str]],
        body: bytes,
        where: int,
        marked_header: str,
    ) -> None:
        verb, path = route
        verb = method or verb
        head: dict[str, bytes] = dict(headers)
        head[marked_header] = _mark(head.get(marked_header, b""), where)
        if valid_token:
            head["Authorization"] = f"Bearer {bearer}".encode()
        if json_type:
            head["Content-Type"] = b"application/json"
        query_text = "&".join(f"{k}={v}" for k, v in query) + f"&{MARK}=1"
        target = path + "?" + quote(query_text, safe="=&")
        extra = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in head.items())
        data = request_bytes(verb, target, body=_mark(body, where), extra_head=extra)

        response = exchange(api, data, timeout_s=10)

        assert response is not None, "closed without an answer"
        assert response.status < 500, response.raw[:3000]
        if 400 <= response.status < 500:
            assert response.headers["content-type"].startswith("application/problem+json"), (
                response.raw[:3000]
            )
            problem: dict[str, Any] = response.json()
            assert problem["status"] == response.status and problem["code"]
        assert MARK.encode() not in response.raw, response.raw[:3000]
        started = time.perf_counter()
        health = exchange(api, request_bytes("GET", "/healthz"), timeout_s=1)
        assert health is not None and health.status == 200
        assert time.perf_counter() - started < 0.1

    check()
    errors = [line for line in api.log_lines() if line.get("level") in {"error", "critical"}]
    assert not errors, errors[:3]
