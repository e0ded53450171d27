"""The demo user and its memberships, for ``make run``, ``make demo`` and
``exporter demo seed``."""

from __future__ import annotations

import contextlib
import uuid

from exporter.config import Settings

# A fixed namespace so the demo user's id is the same on every run (re-seeding replaces rows).
DEMO_NAMESPACE = uuid.UUID("6f1c8a52-3b0e-4d39-9f43-2a8f3f0f5e11")
DEMO_EMAIL = "demo@example.com"


async def seed_demo(
    settings: Settings, *, email: str, password: str, memberships: int
) -> tuple[str, int]:
    """The demo user (same id every run) with exactly ``memberships`` rows."""
    # Imported here: the ``exporter`` command imports this module for DEMO_EMAIL alone.
    import asyncpg

    from exporter.accounts import create_user
    from exporter.errors import ConditionFailed
    from exporter.store.seed import seed_memberships

    user_id = str(uuid.uuid5(DEMO_NAMESPACE, email.lower()))
    # Already there with a persistent DynamoDB: keep it; its rows are replaced below.
    with contextlib.suppress(ConditionFailed):
        await create_user(settings, email=email, password=password, user_id=user_id)
    conn = await asyncpg.connect(settings.postgres.dsn.get_secret_value())
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM memberships WHERE user_id = $1", user_id)
            rows = await seed_memberships(conn, user_id, memberships)
        # Replacing a large demo (a million rows) leaves as many dead tuples: without this a
        # 1,000-row export after it scans them all (~120 ms instead of ~8 ms, measured).
        await conn.execute("VACUUM ANALYZE memberships")
    finally:
        await conn.close()
    return user_id, rows
