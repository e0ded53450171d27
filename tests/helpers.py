"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from exporter.csvstream import neutralise_formula


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class

    user_id: str
    email: str
    password: str


async def sign_in(client: TestClient[Any, Any], user: TestUser) -> dict[str, Any]:
    """The token pair for ``user``, from the real token endpoint."""
    response = await client.post(
        "/v1/auth/token", json={"email": user.email, "password": user.password}
    )
    assert response.status == 200, await response.text()
    pair: dict[str, Any] = await response.json()
    return pair


async def login(client: TestClient[Any, Any], user: TestUser) -> dict[str, str]:
    """Authorization headers for ``user``, obtained through the real token endpoint."""
    return {"Authorization": f"Bearer {(await sign_in(client, user))['access_token']}"}


# --- the CSV contract, written independently of the SQL that implements it ---------------

RAW_EXPORT_QUERY = (
    "SELECT m.guid, o.guid AS org_guid, o.name, m.plan, m.status, m.role, m.started_on,"
    " m.ends_on, m.auto_renew, m.price, m.currency, m.created_at, m.updated_at"
    " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
    " WHERE m.user_id = $1 ORDER BY m.id"
)


def reference_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with Z; fractional seconds only when present, without trailing zeros."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def reference_row(record: Any) -> list[str]:
    """One membership as the README promises it in the CSV."""

    def text(value: str) -> str:
        return neutralise_formula(value)

    return [
        str(record["guid"]),
        str(record["org_guid"]),
        text(record["name"]),
        text(record["plan"]),
        text(record["status"]),
        text(record["role"]),
        record["started_on"].isoformat(),
        record["ends_on"].isoformat() if record["ends_on"] else "",
        "true" if record["auto_renew"] else "false",
        str(record["price"]),
        record["currency"],
        reference_timestamp(record["created_at"]),
        reference_timestamp(record["updated_at"]),
    ]


def scraped(text: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample's value from a Prometheus text exposition, None when it is not there."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
