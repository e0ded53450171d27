"""Typed wrappers over aiohttp-apispec's decorators (the package ships no type hints)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp_apispec
from aiohttp import web

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
