"""Failed-region flags in DynamoDB: which regions an operator has declared failed.

One item per declared region (``region``, ``failed_at``, ``reason``) in a small global table.
The operator writes it in the surviving region (docs/operations.md, *Fail over*), where it
takes effect at once: that region's sweeper takes over the failed region's jobs. It reaches
the failed region when replication resumes, and fences it there (regions.py). Deleting the
item is the failback. A missing item means the region is healthy.
"""

from __future__ import annotations

import time
from datetime import datetime

from exporter.config import DynamoSettings
from exporter.dynamodb import DynamoDB
from exporter.store.dynamo import dynamo_errors, format_ts, get_s, s


class RegionFlagStore:
    """Declare a region failed, restore it, and read which regions are failed."""

    def __init__(self, client: DynamoDB, settings: DynamoSettings) -> None:
        self._client = client
        self._table = settings.regions_table
        # (time.monotonic() before the read, what it found): ``failed_regions_cached``;
        # a change through this store forgets it (and a read in flight then is not kept).
        self._cached: tuple[float, frozenset[str]] | None = None
        self._changes = 0

    async def declare_failed(self, region: str, *, now: datetime, reason: str) -> None:
        """Flag ``region`` as failed (idempotent: a second declaration keeps the first time)."""
        with dynamo_errors("declare_region_failed"):
            await self._client.update_item(
                TableName=self._table,
                Key={"region": s(region)},
                UpdateExpression="SET failed_at = if_not_exists(failed_at, :now), reason = :r",
                ExpressionAttributeValues={":now": s(format_ts(now)), ":r": s(reason)},
            )
        self._forget()

    async def restore(self, region: str) -> None:
        """Clear the flag (failback): ``region`` owns its own jobs again."""
        with dynamo_errors("restore_region"):
            await self._client.delete_item(TableName=self._table, Key={"region": s(region)})
        self._forget()

    async def failed_regions(self) -> frozenset[str]:
        """The regions declared failed, as this region's replica knows them (a strongly
        consistent read of a table of at most a few items)."""
        found: set[str] = set()
        with dynamo_errors("failed_regions"):
            async for page in self._client.pages(
                "Scan", TableName=self._table, ConsistentRead=True
            ):
                for item in page.get("Items", []):
                    region = get_s(item, "region")
                    if region is not None and get_s(item, "failed_at") is not None:
                        found.add(region)
        return frozenset(found)

    async def failed_regions_cached(self, *, max_age_s: float) -> frozenset[str]:
        """``failed_regions`` as read at most ``max_age_s`` ago by this process (a change
        made through this store is seen at once): for the worker's runs, which must not pay
        a Scan each (docs/operations.md, *Fencing*)."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        read_at, changes = time.monotonic(), self._changes
        found = await self.failed_regions()
        if changes == self._changes:
            self._cached = (read_at, found)
        return found

    def _forget(self) -> None:
        self._cached = None
        self._changes += 1
