"""The OpenAPI document and Swagger UI describe every route, its errors and its security."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate


async def test_openapi_document_covers_every_route_with_errors_and_security(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/api/docs/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"].startswith("3.")
    validate(spec)  # raises on anything that is not valid OpenAPI 3
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    paths = spec["paths"]
    assert {
        "/v1/auth/token",
        "/v1/auth/refresh",
        "/v1/exports",
        "/v1/exports/{export_id}",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
    } <= set(paths)
    for method in ("get", "post"):
        op = paths["/v1/exports"][method]
        assert op["security"] == [{"bearerAuth": []}]
        assert {"401", "403"} <= set(op["responses"])
    create = paths["/v1/exports"]["post"]
    assert "202" in create["responses"] and "503" in create["responses"]
    assert "requestBody" in create
    get = paths["/v1/exports/{export_id}"]["get"]
    assert {"404", "422"} <= set(get["responses"])
    (param,) = [p for p in get["parameters"] if p["in"] == "path"]
    assert param["name"] == "export_id" and param["schema"]["format"] == "uuid"


async def test_swagger_ui_is_served(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/docs")
    assert response.status == 200
    assert "swagger" in (await response.text()).lower()
