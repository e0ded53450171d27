"""UserStore against DynamoDB Local: unique e-mails, case-insensitive lookup."""

from __future__ import annotations

import uuid

import pytest

from exporter.errors import ConditionFailed
from exporter.models import User, utcnow
from exporter.resources import Resources


def user(email: str) -> User:
    return User(
        user_id=str(uuid.uuid4()),
        email=email,
        password_hash="$argon2id$x",
        active=True,
        scopes=("exports:read",),
        created_at=utcnow(),
    )


async def test_user_is_found_by_id_and_by_email_in_any_case(resources: Resources) -> None:
    email = f"u-{uuid.uuid4().hex[:8]}@example.com"
    created = user(email)
    await resources.users.create(created)

    assert await resources.users.get(created.user_id) == created
    assert await resources.users.get_by_email(email.upper()) == created
    assert await resources.users.get_by_email("missing@example.com") is None


async def test_an_email_address_belongs_to_one_user_only(resources: Resources) -> None:
    email = f"u-{uuid.uuid4().hex[:8]}@example.com"
    first = user(email)
    await resources.users.create(first)

    with pytest.raises(ConditionFailed):
        await resources.users.create(user(email))

    assert await resources.users.get_by_email(email) == first
