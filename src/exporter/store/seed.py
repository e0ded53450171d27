"""Synthetic organizations and memberships for the demo, the tests and the benchmark.

Generated in SQL (``generate_series``) so a million rows take seconds, not minutes. Some
organization names are deliberately hostile (formula triggers, quotes, commas, line
breaks, non-ASCII) so every export exercises quoting and formula neutralisation.
"""

from __future__ import annotations

from typing import Any

import asyncpg

HOSTILE_NAMES = (
    '=HYPERLINK("http://evil.example","click")',
    "+SUM(1,2)",
    "-2+3",
    "@cmd",
    "\tTabbed Ltd",
    'Quote "Co"',
    "Comma, Inc.",
    "Line\nBreak GmbH",
    "Zürich Ärzte AG",
    "東京ソフトウェア株式会社",
)


async def ensure_organizations(conn: asyncpg.Connection[Any], count: int = 200) -> None:
    """Make sure at least ``count`` organizations exist (hostile names first)."""
    have = int(await conn.fetchval("SELECT count(*) FROM organizations"))
    if have >= count:
        return
    await conn.executemany(
        "INSERT INTO organizations (name) VALUES ($1)", [(n,) for n in HOSTILE_NAMES]
    )
    await conn.execute(
        "INSERT INTO organizations (name)"
        " SELECT 'Organization ' || g FROM generate_series(1, $1) g",
        max(0, count - have - len(HOSTILE_NAMES)),
    )


async def seed_memberships(
    conn: asyncpg.Connection[Any], user_id: str, count: int, *, others_per_row: int = 0
) -> int:
    """Insert ``count`` memberships for ``user_id`` spread over the organizations.

    With ``others_per_row`` = k, k rows of other (random) users are interleaved after each
    of the user's rows, so the user's rows are scattered through the table as in real life.
    Returns the number of rows inserted for ``user_id``.
    """
    if count <= 0:
        return 0
    await ensure_organizations(conn)
    stride = others_per_row + 1
    await conn.execute(
        """
        WITH orgs AS (SELECT array_agg(id ORDER BY id) AS ids FROM organizations)
        INSERT INTO memberships (user_id, organization_id, plan, status, role, started_on,
                                 ends_on, auto_renew, price, currency, created_at, updated_at)
        SELECT CASE WHEN g % $3 = 0 THEN $1::uuid ELSE gen_random_uuid() END,
               orgs.ids[1 + (g % array_length(orgs.ids, 1))],
               (ARRAY['free', 'pro', 'team', 'enterprise', '=1+1'])[1 + g % 5],
               (ARRAY['active', 'trialing', 'past_due', 'cancelled', 'expired'])[1 + g % 5],
               (ARRAY['member', 'admin', 'owner', 'billing'])[1 + g % 4],
               date '2020-01-01' + (g % 1500),
               -- 7 shares no factor with the usual strides, so every user gets some NULLs
               CASE WHEN g % 7 = 0 THEN NULL ELSE date '2020-01-01' + (g % 1500) + 365 END,
               g % 2 = 0,
               round(((g % 10000) / 100.0)::numeric, 2),
               (ARRAY['EUR', 'USD', 'GBP', 'JPY'])[1 + g % 4],
               timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => g * 37),
               timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => g * 41)
        FROM generate_series(1, $2::int * $3::int) AS g, orgs
        ORDER BY g
        """,
        user_id,
        count,
        stride,
    )
    return count
