"""The OpenAPI decorators (aiohttp-apigami's, typed by the package itself) and what the
document must say about every route beyond them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)

__all__ = [
    "Handler",
    "docs",
    "document_problems",
    "match_info_schema",
    "querystring_schema",
    "request_schema",
    "response_schema",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


PROBLEM_JSON = "application/problem+json"
_PROBLEM_REF = "#/components/schemas/Problem"


def document_problems(spec: dict[str, Any]) -> None:
    """Make the document say what the middlewares do for every route: errors are
    ``application/problem+json``; a JSON body may be malformed (400), too large (413) or of
    the wrong type (415); input may be invalid (422); a bearer route answers 401 and 403;
    anything may fail unexpectedly (500, with nothing inside)."""
    problem = {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}}
    schemas = spec.get("components", {}).get("schemas", {})
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            body = operation.get("requestBody")
            if body is not None:
                # A body whose schema has required fields is itself required.
                ref = body["content"]["application/json"]["schema"].get("$ref", "")
                if _has_required_fields(schemas, ref.rsplit("/", 1)[-1]):
                    body["required"] = True
            responses: dict[str, Any] = operation.setdefault("responses", {})
            standard: dict[str, str] = {}
            if "requestBody" in operation:
                standard |= {
                    "400": "The body is not valid JSON",
                    "413": "The body is too large",
                    "415": "The body is not application/json",
                    "422": "Invalid body",
                }
            if operation.get("parameters"):
                standard["422"] = "Invalid parameters"
            if operation.get("security"):
                standard |= {
                    "401": "Missing, invalid or expired token (`WWW-Authenticate: Bearer`)",
                    "403": "The token lacks the needed scope",
                }
            standard["500"] = "Unexpected error; the body says nothing more"
            for code, description in standard.items():
                responses.setdefault(code, {"description": description, "content": problem})
            for response in responses.values():
                content = response.get("content", {})
                body = content.get("application/json")
                if body is not None and body.get("schema", {}).get("$ref") == _PROBLEM_REF:
                    content[PROBLEM_JSON] = content.pop("application/json")


def _has_required_fields(components: dict[str, Any], name: str) -> bool:
    return bool(components.get(name, {}).get("required"))
