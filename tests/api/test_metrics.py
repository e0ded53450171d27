"""GET /metrics: request counts and latencies by route template and status, queue gauges."""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from exporter.config import Settings
from exporter.metrics import sample_value
from tests.conftest import MakeUser
from tests.helpers import login


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from the text exposition (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    raise LookupError(f"{name}{labels} not exposed")


async def test_requests_are_counted_by_route_template_and_status(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    user = await make_user()
    headers = await login(client, user)
    missing = f"/v1/exports/{uuid.uuid4()}"
    get_labels = {"method": "GET", "route": "/v1/exports/{export_id}", "status": "404"}
    before = sample_value("exporter_http_requests_total", get_labels)

    assert (await client.get(missing, headers=headers)).status == 404
    assert (await client.get(missing, headers=headers)).status == 404
    assert (await client.get("/no/such/path")).status == 404

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    assert _sample(text, "exporter_http_requests_total", **get_labels) == before + 2
    # Raw paths never become label values: one series for everything unmatched.
    assert "/no/such/path" not in text
    assert (
        _sample(text, "exporter_http_requests_total", method="GET", route="unmatched", status="404")
        >= 1
    )
    assert (
        _sample(
            text,
            "exporter_http_request_duration_seconds_count",
            method="POST",
            route="/v1/auth/token",
            status="200",
        )
        >= 1
    )


async def test_created_exports_and_the_queue_show_in_metrics(
    client: TestClient[Any, Any], make_user: MakeUser, settings: Settings
) -> None:
    created_before = sample_value("exporter_exports_created_total", {"format": "csv"})

    for _ in range(2):  # two users: one active export per user
        headers = await login(client, await make_user())
        assert (await client.post("/v1/exports", json={}, headers=headers)).status == 202

    text = await (await client.get("/metrics")).text()
    assert _sample(text, "exporter_exports_created_total", format="csv") == created_before + 2
    # Read from Redis at scrape time: both messages wait, none runs (no worker here).
    queue = settings.redis.queue_name
    assert _sample(text, "exporter_queue_ready_jobs", queue=queue) == 2
    assert _sample(text, "exporter_queue_in_progress_jobs", queue=queue) == 0
    assert _sample(text, "exporter_queue_oldest_ready_age_seconds", queue=queue) >= 0


async def test_the_api_counts_its_dynamodb_calls_two_per_create(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    before = {
        op: sample_value("exporter_dynamodb_calls_total", {"operation": op})
        for op in ("GetItem", "TransactWriteItems")
    }

    assert (await client.post("/v1/exports", json={}, headers=headers)).status == 202

    text = await (await client.get("/metrics")).text()
    # What the rush benchmark reads from /metrics: per create, one slot read, one transaction.
    assert (
        _sample(text, "exporter_dynamodb_calls_total", operation="GetItem") == before["GetItem"] + 1
    )
    assert (
        _sample(text, "exporter_dynamodb_calls_total", operation="TransactWriteItems")
        == before["TransactWriteItems"] + 1
    )
