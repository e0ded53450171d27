"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class

    user_id: str
    email: str
    password: str


async def login(client: TestClient[Any, Any], user: TestUser) -> dict[str, str]:
    """Authorization headers for ``user``, obtained through the real token endpoint."""
    response = await client.post(
        "/v1/auth/token", json={"email": user.email, "password": user.password}
    )
    assert response.status == 200, await response.text()
    token = (await response.json())["access_token"]
    return {"Authorization": f"Bearer {token}"}
