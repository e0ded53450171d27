"""IdempotencyStore against DynamoDB Local: one live record per (user, key), for 24 hours."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from exporter.errors import ConditionFailed
from exporter.models import utcnow
from exporter.resources import Resources
from exporter.store.idempotency import KEY_TTL_S, request_fingerprint


def test_fingerprints_ignore_key_order_and_tell_values_apart() -> None:
    assert request_fingerprint({"format": "csv", "bom": False}) == request_fingerprint(
        {"bom": False, "format": "csv"}
    )
    assert request_fingerprint({"format": "csv"}) != request_fingerprint({"format": "csv.gz"})


async def test_a_key_is_claimed_once_per_user_and_read_back(resources: Resources) -> None:
    keys = resources.idempotency
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    now = utcnow()
    assert await keys.get(alice, "k", now=now) is None

    await keys.put(alice, "k", job_id="j1", status=202, fingerprint="f", now=now)
    with pytest.raises(ConditionFailed):
        await keys.put(alice, "k", job_id="j2", status=202, fingerprint="f", now=now)
    await keys.put(bob, "k", job_id="j3", status=200, fingerprint="g", now=now)

    record = await keys.get(alice, "k", now=now)
    assert record is not None
    assert (record.job_id, record.status, record.fingerprint) == ("j1", 202, "f")
    theirs = await keys.get(bob, "k", now=now)
    assert theirs is not None and theirs.job_id == "j3"


async def test_a_record_past_its_24_hours_reads_as_absent_and_can_be_claimed_again(
    resources: Resources,
) -> None:
    keys = resources.idempotency
    user = str(uuid.uuid4())
    then = utcnow() - timedelta(seconds=KEY_TTL_S + 5)
    await keys.put(user, "k", job_id="old", status=202, fingerprint="f", now=then)

    assert await keys.get(user, "k", now=utcnow()) is None
    await keys.put(user, "k", job_id="new", status=202, fingerprint="f", now=utcnow())
    again = await keys.get(user, "k", now=utcnow())
    assert again is not None and again.job_id == "new"


async def test_release_forgets_only_the_named_export(resources: Resources) -> None:
    keys = resources.idempotency
    user = str(uuid.uuid4())
    now = utcnow()
    await keys.put(user, "k", job_id="j1", status=202, fingerprint="f", now=now)

    await keys.release(user, "k", job_id="another")
    assert await keys.get(user, "k", now=now) is not None
    await keys.release(user, "k", job_id="j1")
    assert await keys.get(user, "k", now=now) is None
