"""Response hardening: headers on every kind of response, the Swagger UI CSP, CORS only when
configured, and a 500 that tells the client nothing."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import create_app
from exporter.auth import TokenService
from exporter.config import Settings
from tests.conftest import MakeUser
from tests.helpers import login

Client = TestClient[Any, Any]
SECRET_DETAIL = "db password is hunter2 at /srv/app/secret.py line 42"


async def test_every_kind_of_response_carries_the_safety_headers(
    client: Client, make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    responses = [
        await client.get("/v1/exports", headers=headers),  # authenticated 200
        await client.post("/v1/exports", headers=headers),  # 202
        await client.get("/v1/exports"),  # 401
        await client.get("/v1/nope"),  # 404
        await client.delete("/v1/exports"),  # 405
        await client.post("/v1/auth/token", data="x", headers={"Content-Type": "text/plain"}),
        await client.get("/healthz"),
        await client.get("/api/docs/openapi.json"),
        await client.get("/static/swagger/swagger-ui.css"),
    ]
    for response in responses:
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "Content-Security-Policy" in response.headers
        assert "Access-Control-Allow-Origin" not in response.headers  # CORS is off
    for response in responses[:6]:
        assert response.headers["Cache-Control"] == "no-store"
    assert responses[0].headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_swagger_ui_csp_allows_exactly_its_own_scripts(client: Client) -> None:
    response = await client.get("/api/docs")
    assert response.status == 200
    html = await response.text()
    csp = {}
    for part in response.headers["Content-Security-Policy"].split(";"):
        name, _, value = part.strip().partition(" ")
        csp[name] = value
    scripts = csp["script-src"].split()
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert inline, "Swagger UI boots from an inline script"
    for body in inline:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in scripts
    # Every external script and stylesheet is ours, served from where 'self' allows.
    for src in re.findall(r'<script src="([^"]+)"', html) + re.findall(r'href="([^"]+)"', html):
        assert src.startswith("/static/swagger/"), src
        assert (await client.get(src)).status == 200
    assert csp["connect-src"] == "'self'"  # it fetches the spec from us
    assert csp["frame-ancestors"] == "'none'"


async def test_hsts_when_served_over_https(settings: Settings, tokens: TokenService) -> None:
    https = settings.model_copy(
        update={"api": settings.api.model_copy(update={"public_url": "https://api.example"})}
    )
    async with TestClient(TestServer(create_app(https, tokens=tokens))) as client:
        response = await client.get("/healthz")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


@pytest.fixture(name="cors_client")
async def _fix_cors_client(settings: Settings, tokens: TokenService) -> AsyncIterator[Client]:
    cors = settings.model_copy(
        update={"api": settings.api.model_copy(update={"cors_origins": ["https://app.example"]})}
    )
    async with TestClient(TestServer(create_app(cors, tokens=tokens))) as client:
        yield client


async def test_cors_answers_only_configured_origins(
    cors_client: Client, make_user: MakeUser
) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    response = await cors_client.options("/v1/exports", headers=preflight)
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Idempotency-Key" in response.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in response.headers

    evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    response = await cors_client.options("/v1/exports", headers=evil)
    assert response.status == 405
    assert "Access-Control-Allow-Origin" not in response.headers

    headers = await login(cors_client, await make_user())
    response = await cors_client.get(
        "/v1/exports", headers={**headers, "Origin": "https://app.example"}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in response.headers.getall("Vary")
    response = await cors_client.get(
        "/v1/exports", headers={**headers, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_preflight_without_cors_configured_is_a_405_problem(client: Client) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    response = await client.options("/v1/exports", headers=preflight)
    assert response.status == 405
    assert response.content_type == "application/problem+json"
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_an_unexpected_error_is_a_500_problem_without_internals(
    settings: Settings, tokens: TokenService
) -> None:
    app = create_app(settings, tokens=tokens)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError(SECRET_DETAIL)

    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/broken")
        text = await response.text()
    assert response.status == 500
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert body["code"] == "internal_error"
    assert body["detail"] == "An unexpected error occurred."
    for leak in ("hunter2", "RuntimeError", "Traceback", "secret.py", "broken"):
        assert leak not in text
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Request-ID"]  # what support asks for instead


async def test_the_document_shows_errors_and_security_for_every_route(client: Client) -> None:
    spec = await (await client.get("/api/docs/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            responses = operation["responses"]
            assert "500" in responses, where
            for code, response in responses.items():
                content = response.get("content", {})
                if int(code) >= 400 and path != "/readyz":  # readyz: a health report
                    assert list(content) == ["application/problem+json"], (where, code)
            if path.startswith("/v1/exports"):
                assert operation["security"] == [{"bearerAuth": []}], where
                assert {"401", "403"} <= set(responses), where
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= set(responses), where
    assert spec["paths"]["/v1/auth/token"]["post"]["requestBody"]["required"] is True
    assert "429" in spec["paths"]["/v1/auth/token"]["post"]["responses"]
