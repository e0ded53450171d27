"""Idempotency keys of POST /v1/exports in DynamoDB: which response a key got, for 24 hours.

One item per (user, key): the export it answered with, the status (202 created, 200 the
already active one) and a fingerprint of the request body, so the same key with another body
is told apart from a retry. A key is recorded in the same transaction that creates its
export (or, for a 200, with a conditional put of its own), so two requests racing with one
key cannot both create. Items expire through DynamoDB TTL; readers also check
``expires_at`` themselves, since TTL deletes with a lag.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporter.config import DynamoSettings
from exporter.dynamodb import DynamoDB
from exporter.errors import ConditionFailed
from exporter.store.dynamo import dynamo_errors, get_n, get_s, n, s

# How long a key's response is replayed (the Idempotency-Key draft leaves it to the server).
KEY_TTL_S = 24 * 3600


def request_fingerprint(options: Mapping[str, Any]) -> str:
    """A stable hash of the request's meaning (its validated options, defaults included)."""
    canonical = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """The response a key got: the export and the status code it was answered with."""

    job_id: str
    status: int
    fingerprint: str
    expires_at: datetime


class IdempotencyStore:
    """Record and look up the response each (user, Idempotency-Key) got."""

    def __init__(self, client: DynamoDB, settings: DynamoSettings) -> None:
        self._client = client
        self._table = settings.idempotency_keys_table

    @staticmethod
    def _pk(user_id: str, key: str) -> str:
        # Keys are per user; hashing keeps the item key short whatever the client sends.
        return f"{user_id}#{hashlib.sha256(key.encode()).hexdigest()}"

    async def get(self, user_id: str, key: str, *, now: datetime) -> KeyRecord | None:
        """The live record for this key, or None (never used, or past its 24 hours)."""
        with dynamo_errors("get_idempotency_key"):
            response = await self._client.get_item(
                TableName=self._table,
                Key={"pk": s(self._pk(user_id, key))},
                ConsistentRead=True,
            )
        item = response.get("Item")
        if item is None:
            return None
        expires_at = datetime.fromtimestamp(get_n(item, "expires_at") or 0, UTC)
        if expires_at <= now:
            return None  # TTL has not got round to it yet
        return KeyRecord(
            job_id=str(get_s(item, "job_id")),
            status=int(get_n(item, "status") or 0),
            fingerprint=str(get_s(item, "fingerprint")),
            expires_at=expires_at,
        )

    def put_item(
        self, user_id: str, key: str, *, job_id: str, status: int, fingerprint: str, now: datetime
    ) -> dict[str, Any]:
        """The conditional Put that claims this key, for a TransactWriteItems list.

        It succeeds only while the key is unused or past its 24 hours.
        """
        return {
            "Put": {
                "TableName": self._table,
                "Item": {
                    "pk": s(self._pk(user_id, key)),
                    "job_id": s(job_id),
                    "status": n(status),
                    "fingerprint": s(fingerprint),
                    "expires_at": n(int(now.timestamp()) + KEY_TTL_S),
                },
                "ConditionExpression": "attribute_not_exists(pk) OR expires_at <= :now",
                "ExpressionAttributeValues": {":now": n(int(now.timestamp()))},
            }
        }

    async def put(
        self, user_id: str, key: str, *, job_id: str, status: int, fingerprint: str, now: datetime
    ) -> None:
        """Claim the key on its own; ``ConditionFailed`` when a live record has it already."""
        put = self.put_item(
            user_id, key, job_id=job_id, status=status, fingerprint=fingerprint, now=now
        )["Put"]
        with dynamo_errors("put_idempotency_key"):
            await self._client.put_item(**put)

    async def release(self, user_id: str, key: str, *, job_id: str) -> None:
        """Forget the key if it still names ``job_id``: that request did not succeed after
        all (its export could not be queued), so a retry with the key must start afresh."""
        try:
            with dynamo_errors("release_idempotency_key"):
                await self._client.delete_item(
                    TableName=self._table,
                    Key={"pk": s(self._pk(user_id, key))},
                    ConditionExpression="job_id = :j",
                    ExpressionAttributeValues={":j": s(job_id)},
                )
        except ConditionFailed:
            pass  # it names another export by now: leave it
