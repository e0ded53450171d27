"""Two DynamoDB Local tables standing in for two replicas of one global table, and the
replication between them, resolved the way global tables resolve it: item by item, and
for an item written in both replicas since they last agreed, the last writer wins.

DynamoDB stamps each write with its own clock; here the write time of an item is the latest
timestamp the item carries (every job write sets one: ``updated_at``, ``heartbeat_at``,
``email_sent_at``...), so a test makes a write "later" by giving it a later ``now``.
Nothing replicates until ``sync()`` is called: between two calls the replicas are
partitioned, which is how a test holds a write "in flight".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exporter.store.dynamo import parse_ts

Item = dict[str, Any]
Key = tuple[tuple[str, str], ...]


def write_time(item: Mapping[str, Any] | None) -> datetime:
    """The item's last write, as far as its own timestamps tell (a deletion: the epoch)."""
    latest = datetime.fromtimestamp(0, UTC)
    for value in (item or {}).values():
        text = value.get("S") if isinstance(value, Mapping) else None
        if not isinstance(text, str):
            continue
        try:
            latest = max(latest, parse_ts(text))
        except ValueError:
            continue
    return latest


@dataclass
class SyncReport:
    """What one ``sync()`` did, per direction, and which conflicts it settled."""

    a_to_b: int = 0
    b_to_a: int = 0
    conflicts: list[tuple[str, Key, str]] = field(default_factory=list)  # (table, key, winner)


class LastWriterWins:
    """Replicate tables pairwise between two replicas (``a`` and ``b``) on ``sync()``."""

    def __init__(self, client: Any, pairs: Mapping[str, tuple[str, str]]) -> None:
        """``pairs``: a name per global table -> (its table in replica a, in replica b)."""
        self._client = client
        self._pairs = dict(pairs)
        self._agreed: dict[tuple[str, Key], Item | None] = {}
        self._keys: dict[str, list[str]] = {}

    async def _key_names(self, table: str) -> list[str]:
        if table not in self._keys:
            described = await self._client.describe_table(TableName=table)
            self._keys[table] = [k["AttributeName"] for k in described["Table"]["KeySchema"]]
        return self._keys[table]

    async def _scan(self, table: str) -> dict[Key, Item]:
        names = await self._key_names(table)
        items: dict[Key, Item] = {}
        async for page in self._client.pages("Scan", TableName=table, ConsistentRead=True):
            for item in page.get("Items", []):
                key = tuple((name, str(item[name]["S"])) for name in names)
                items[key] = item
        return items

    async def _write(self, table: str, key: Key, item: Item | None) -> None:
        if item is None:
            await self._client.delete_item(
                TableName=table, Key={name: {"S": value} for name, value in key}
            )
        else:
            await self._client.put_item(TableName=table, Item=item)

    async def sync(self) -> SyncReport:
        """Bring both replicas to agreement: a change made on one side since they last
        agreed is copied to the other; a change made on both is settled by write time."""
        report = SyncReport()
        for name, (table_a, table_b) in self._pairs.items():
            in_a, in_b = await self._scan(table_a), await self._scan(table_b)
            for key in set(in_a) | set(in_b):
                item_a, item_b = in_a.get(key), in_b.get(key)
                agreed = self._agreed.get((name, key))
                if item_a == item_b:
                    self._agreed[(name, key)] = item_a
                    continue
                a_changed, b_changed = item_a != agreed, item_b != agreed
                if a_changed and b_changed:
                    winner = "a" if write_time(item_a) > write_time(item_b) else "b"
                    report.conflicts.append((name, key, winner))
                else:
                    winner = "a" if a_changed else "b"
                if winner == "a":
                    await self._write(table_b, key, item_a)
                    report.a_to_b += 1
                    self._agreed[(name, key)] = item_a
                else:
                    await self._write(table_a, key, item_b)
                    report.b_to_a += 1
                    self._agreed[(name, key)] = item_b
        return report
