"""Typed wrappers over aiohttp-apispec's decorators (the package ships no type hints)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp_apispec
from aiohttp import web
from marshmallow import class_registry
from marshmallow.exceptions import RegistryError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Decorator = Callable[[Handler], Handler]


def docs(**kwargs: Any) -> Decorator:
    return cast(Decorator, aiohttp_apispec.docs(**kwargs))


def request_schema(schema: Any, **kwargs: Any) -> Decorator:
    return cast(Decorator, aiohttp_apispec.request_schema(schema, **kwargs))


def match_info_schema(schema: Any) -> Decorator:
    return cast(Decorator, aiohttp_apispec.match_info_schema(schema))


def querystring_schema(schema: Any) -> Decorator:
    return cast(Decorator, aiohttp_apispec.querystring_schema(schema))


def response_schema(schema: Any, code: int = 200, **kwargs: Any) -> Decorator:
    return cast(Decorator, aiohttp_apispec.response_schema(schema, code, **kwargs))


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
    if name in components:
        return bool(components[name].get("required"))
    # aiohttp-apispec registers a request schema's component only in the first application
    # built in a process (tests build many); ask marshmallow's registry instead.
    try:
        schema = class_registry.get_class(name)
    except RegistryError:
        return False
    return any(f.required for f in cast(Any, schema)._declared_fields.values())
