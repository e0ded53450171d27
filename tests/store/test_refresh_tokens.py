"""Refresh-token rotation across two regions (a global table, last writer wins): a token
refreshed in both regions at once forks its family, and the fork is caught as reuse; a
revocation cannot be undone by a rotation racing it; a rotation whose family write has not
replicated yet is deferred, never revoked. Two DynamoDB Local tables stand in for the two
replicas (tests/replication.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from exporter.aws import open_dynamo
from exporter.config import Settings
from exporter.errors import ConditionFailed
from exporter.models import utcnow
from exporter.store.refresh_tokens import RefreshTokenStore, token_hash
from exporter.store.tables import table_specs
from tests.conftest import RUN_ID
from tests.replication import LastWriterWins


def _token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(name="replicas")
async def _fix_replicas(
    base_settings: Settings,
) -> AsyncIterator[tuple[RefreshTokenStore, RefreshTokenStore, LastWriterWins, Any]]:
    tag = secrets.token_hex(3)
    settings = [
        base_settings.dynamo.model_copy(update={"table_prefix": f"t{RUN_ID}-{tag}-{side}-"})
        for side in "ab"
    ]
    async with open_dynamo(base_settings.dynamo) as client:
        for dynamo in settings:
            (spec,) = [
                s for s in table_specs(dynamo) if s["TableName"] == dynamo.refresh_tokens_table
            ]
            await client.create_table(**spec)
        replication = LastWriterWins(
            client,
            {
                "refresh-tokens": (
                    settings[0].refresh_tokens_table,
                    settings[1].refresh_tokens_table,
                )
            },
        )
        yield (
            RefreshTokenStore(client, settings[0]),
            RefreshTokenStore(client, settings[1]),
            replication,
            client,
        )
        for dynamo in settings:
            await client.delete_table(TableName=dynamo.refresh_tokens_table)


def _expiry() -> int:
    return int((utcnow() + timedelta(days=1)).timestamp())


async def _rotate(store: RefreshTokenStore, old: str) -> str:
    now = utcnow()
    record = await store.get(old, now=now)
    assert record is not None
    assert not (record.used or record.forked or record.family_revoked)
    new = _token()
    await store.rotate(old, new, record=record, new_expires_at=_expiry(), now=now)
    return new


async def test_a_token_refreshed_in_both_regions_forks_and_the_fork_is_reuse(
    replicas: tuple[RefreshTokenStore, RefreshTokenStore, LastWriterWins, Any],
) -> None:
    a, b, replication, _ = replicas
    first = _token()
    await a.start_family(first, user_id="u1", expires_at=_expiry())
    await replication.sync()

    # Within the replication window both regions accept the same token: a transaction is
    # atomic only in its own region.
    in_a, in_b = await _rotate(a, first), await _rotate(b, first)
    report = await replication.sync()
    assert {table for table, _, _ in report.conflicts} == {"refresh-tokens"}

    # Last writer wins kept one head; the other successor, though unused, is a fork.
    now = utcnow()
    records = {t: await a.get(t, now=now) for t in (in_a, in_b)}
    forked = [t for t, r in records.items() if r is not None and r.forked]
    heads = [t for t, r in records.items() if r is not None and not r.forked]
    assert len(forked) == 1 and len(heads) == 1
    # The same answer in the other region.
    again = await b.get(forked[0], now=now)
    assert again is not None and again.forked and not again.family_behind

    # Presented again, the fork revokes the family (the API's reuse path): both branches
    # are out, in both regions, once that replicates.
    await b.revoke_family(again.family_id)
    await replication.sync()
    for store in (a, b):
        head = await store.get(heads[0], now=utcnow())
        assert head is not None and head.family_revoked


async def test_a_revocation_is_not_undone_by_a_rotation_racing_it(
    replicas: tuple[RefreshTokenStore, RefreshTokenStore, LastWriterWins, Any],
) -> None:
    a, b, replication, _ = replicas
    first = _token()
    family = await a.start_family(first, user_id="u2", expires_at=_expiry())
    await replication.sync()

    # Sign-out in region a while region b rotates the same family.
    assert await a.revoke_family(family)
    successor = await _rotate(b, first)
    report = await replication.sync()
    assert report.conflicts, "both regions wrote the family item"
    # Whichever family item won, the revocation holds, in both regions...
    for store in (a, b):
        record = await store.get(successor, now=utcnow())
        assert record is not None and record.family_revoked
    # ...and no further rotation is possible.
    record = await b.get(successor, now=utcnow())
    assert record is not None
    with pytest.raises(ConditionFailed):
        await b.rotate(successor, _token(), record=record, new_expires_at=_expiry(), now=utcnow())


async def test_a_rotation_not_replicated_yet_is_deferred_not_revoked(
    replicas: tuple[RefreshTokenStore, RefreshTokenStore, LastWriterWins, Any],
) -> None:
    a, b, replication, client = replicas
    first = _token()
    await a.start_family(first, user_id="u3", expires_at=_expiry())
    await replication.sync()
    second = await _rotate(a, first)

    # Items replicate one by one: the new token reached region b, its family item not yet.
    key = {"pk": {"S": f"token#{token_hash(second)}"}}
    item = (await client.get_item(TableName=_table(a), Key=key, ConsistentRead=True))["Item"]
    await client.put_item(TableName=_table(b), Item=item)
    early = await b.get(second, now=utcnow())
    assert early is not None
    assert early.family_behind and not early.forked and not early.family_revoked

    await replication.sync()
    settled = await b.get(second, now=utcnow())
    assert settled is not None
    assert not (settled.family_behind or settled.forked or settled.family_revoked)
    await _rotate(b, second)


def _table(store: RefreshTokenStore) -> str:
    # The test writes one item behind the store's back (a partial replication).
    table: str = store._table
    return table
