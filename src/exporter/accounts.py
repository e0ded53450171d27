"""User accounts: creating one (the ``exporter users create`` command, the demo, tests)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from exporter.auth import DEFAULT_SCOPES
from exporter.aws import open_dynamo
from exporter.config import Settings
from exporter.models import User, utcnow
from exporter.passwords import Passwords
from exporter.store.users import UserStore, normalise_email


async def create_user(
    settings: Settings,
    *,
    email: str,
    password: str,
    user_id: str | None = None,
    scopes: Sequence[str] | None = None,
) -> str:
    """Create a user in DynamoDB; returns the id. Shared by the CLI, the demo and tests."""
    user = User(
        user_id=user_id or str(uuid.uuid4()),
        email=normalise_email(email),
        password_hash=Passwords().hash(password),
        active=True,
        # An explicit empty list means no scopes, not the defaults.
        scopes=tuple(DEFAULT_SCOPES if scopes is None else scopes),
        created_at=utcnow(),
    )
    async with open_dynamo(settings.dynamo) as client:
        await UserStore(client, settings.dynamo).create(user)
    return user.user_id
