"""Failed-region flags against DynamoDB Local."""

from __future__ import annotations

import uuid

from exporter.models import utcnow
from exporter.resources import Resources
from exporter.store.regions import RegionFlagStore


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
