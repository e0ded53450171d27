"""Authorisation over the whole route table: every route that is not public wants a bearer
token (401 with a challenge), its scope (403), and never shows or touches another user's
export (404, as for a missing one). Routes are read from the router, so a route added later
is covered without touching this file."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from exporter.auth import Scope
from exporter.keys import RESOURCES
from tests.conftest import MakeUser
from tests.helpers import login

Client = TestClient[Any, Any]

# Reachable without a token, on purpose.
PUBLIC = {
    "healthz",
    "readyz",
    "jwks",
    "issue_token",
    "refresh_token",
    "logout",
    "swagger.docs",
    "swagger.spec",
    "swagger.static",
    "metrics",  # Prometheus scrapes it; the ingress must not route it (README)
    "open_download",  # the token in the path is the credential (test_download_links.py)
    "home",  # the self-service page and its assets: static, they sign in through the API
    "asset",
    # The pause link of a scheduled export's email: its token is the credential
    # (test_schedule_links.py).
    "confirm_schedule_pause",
    "pause_schedule_by_link",
}


def protected_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route that needs a token."""
    routes = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.name in PUBLIC:
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        assert path, f"route {route.name} has no path"
        routes.append((route.method, str(path)))
    return routes


def fill(template: str, export_id: str) -> str:
    return template.replace("{export_id}", export_id).replace("{schedule_id}", export_id)


async def call(client: Client, method: str, path: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return await client.request(method, path, **kwargs)


async def test_the_route_table_is_what_this_file_expects(client: Client) -> None:
    routes = protected_routes(client.app)
    assert ("GET", "/v1/exports/{export_id}") in routes
    assert ("POST", "/v1/exports") in routes
    assert ("DELETE", "/v1/exports/{export_id}") in routes
    # Every path parameter is an export id, so the IDOR test below reaches every such route,
    # or a schedule id (tests/api/test_schedules.py: another user's schedule is a 404).
    for _, path in routes:
        rest = path.replace("{export_id}", "").replace("{schedule_id}", "")
        assert "{" not in rest, f"add a case for {path}"


async def test_every_protected_route_wants_a_bearer_token(client: Client) -> None:
    for method, template in protected_routes(client.app):
        response = await call(client, method, fill(template, str(uuid.uuid4())), {})
        assert response.status == 401, (method, template)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.content_type == "application/problem+json"


async def test_every_protected_route_wants_a_scope(client: Client, make_user: MakeUser) -> None:
    nobody = await login(client, await make_user(scopes=[]))
    for method, template in protected_routes(client.app):
        response = await call(client, method, fill(template, str(uuid.uuid4())), nobody)
        assert response.status == 403, (method, template, await response.text())
        assert (await response.json())["code"] == "insufficient_scope"


async def test_no_route_reaches_another_users_export(client: Client, make_user: MakeUser) -> None:
    owner = await login(client, await make_user())
    intruder = await login(client, await make_user(scopes=list(Scope)))
    created = await client.post("/v1/exports", headers=owner)
    assert created.status == 202
    export_id = (await created.json())["id"]
    jobs = client.app[RESOURCES].jobs
    before = await jobs.get(export_id)

    routes = [(m, t) for m, t in protected_routes(client.app) if "{export_id}" in t]
    assert routes
    for method, template in routes:
        path = fill(template, export_id)
        response = await call(client, method, path, intruder)
        assert response.status == 404, (method, template, await response.text())
        # The same answer as for an id that does not exist: nothing is confirmed.
        missing = await call(client, method, fill(template, str(uuid.uuid4())), intruder)
        assert (await response.json())["code"] == (await missing.json())["code"]
        assert export_id not in await response.text()

    assert await jobs.get(export_id) == before  # nothing was changed either
    listing = await (await client.get("/v1/exports", headers=intruder)).json()
    assert all(item["id"] != export_id for item in listing["items"])


async def test_path_ids_must_be_well_formed(client: Client, make_user: MakeUser) -> None:
    headers = await login(client, await make_user())
    for method, template in protected_routes(client.app):
        if "{export_id}" not in template:
            continue
        for bad in ("not-a-uuid", "..%2f..%2fetc", "1" * 200):
            response = await call(client, method, fill(template, bad), headers)
            assert response.status in (404, 422), (method, template, bad)
            assert response.content_type == "application/problem+json"


async def test_the_token_is_checked_before_the_request_is_read(
    client: Client, make_user: MakeUser
) -> None:
    # A caller without a valid token learns nothing about what a valid request looks like:
    # a malformed id, query or body still gets 401 (or 403 without the scope), never a 422
    # that describes the schema, and the body is never parsed for them.
    nobody = await login(client, await make_user(scopes=[]))
    for method, template in protected_routes(client.app):
        path = fill(template, "not-a-uuid") + "?limit=oops&limit=twice&cursor="
        for headers, status in (({}, 401), ({"Authorization": "Bearer x.y.z"}, 401)):
            response = await client.request(
                method, path, headers=headers, data=b'{"format": 7, "unknown": ['
            )
            assert response.status == status, (method, template, await response.text())
            assert response.content_type == "application/problem+json"
        response = await client.request(
            method, path, headers={**nobody, "Content-Type": "application/json"}, data=b"{"
        )
        assert response.status == 403, (method, template, await response.text())
