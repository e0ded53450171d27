"""Failed-region flags against DynamoDB Local."""

from __future__ import annotations

import uuid

from exporter.models import utcnow
from exporter.resources import Resources
from exporter.store.regions import RegionFlagStore
from tests.helpers import DynamoCalls


async def test_declare_read_and_restore(resources: Resources) -> None:
    flags = RegionFlagStore(resources.dynamo, resources.settings.dynamo)
    region = f"xx-test-{uuid.uuid4().hex[:6]}"
    assert region not in await flags.failed_regions()

    first = utcnow()
    await flags.declare_failed(region, now=first, reason="health check failing")
    await flags.declare_failed(region, now=utcnow(), reason="still failing")  # idempotent
    assert region in await flags.failed_regions()
    item = await resources.dynamo.get_item(
        TableName=resources.settings.dynamo.regions_table,
        Key={"region": {"S": region}},
        ConsistentRead=True,
    )
    assert item["Item"]["reason"]["S"] == "still failing"
    # The first declaration's time stays: it says since when the region is failed.
    assert item["Item"]["failed_at"]["S"] == first.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    await flags.restore(region)
    assert region not in await flags.failed_regions()
    await flags.restore(region)  # restoring a healthy region is fine


async def test_a_runs_read_of_the_flags_is_kept_for_a_while_and_forgotten_on_a_change(
    resources: Resources,
) -> None:
    flags = RegionFlagStore(resources.dynamo, resources.settings.dynamo)
    other = RegionFlagStore(resources.dynamo, resources.settings.dynamo)  # another process
    region = f"xx-test-{uuid.uuid4().hex[:6]}"

    with DynamoCalls() as reads:
        assert region not in await flags.failed_regions_cached(max_age_s=60)
        await other.declare_failed(region, now=utcnow(), reason="test")
        # Within its age the kept read answers, without a call (and without the news).
        assert region not in await flags.failed_regions_cached(max_age_s=60)
    assert reads.calls == {"Scan": 1, "UpdateItem": 1}, reads.calls

    assert region in await flags.failed_regions_cached(max_age_s=0)  # too old: read again
    await flags.restore(region)  # a change made through this store is seen at once
    assert region not in await flags.failed_regions_cached(max_age_s=60)
