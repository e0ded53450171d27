"""Refresh tokens in DynamoDB: single use, grouped in families, stored only as hashes.

One table, two kinds of item under the key ``pk``:

    token#<sha256 of the token>   family_id, user_id, expires_at, used_at (once rotated)
    family#<uuid>                 user_id, revoked, expires_at (the newest token's expiry)

A sign-in starts a family. A refresh marks the presented token used, checks the family is not
revoked, and stores its successor, all in one transaction. Presenting a used token again is
reuse: someone kept a copy, so the whole family is revoked and both parties must sign in.
``expires_at`` is the DynamoDB TTL attribute; TTL deletes with a lag, so reads check it too.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exporter.config import DynamoSettings
from exporter.errors import ConditionFailed
from exporter.store.dynamo import Item, dynamo_errors, get_bool, get_n, get_s, n, s


def token_hash(token: str) -> str:
    """What we store instead of the token. Tokens carry 122 random bits (their ``jti``) and a
    signature, so a plain SHA-256 cannot be reversed or guessed; no salt is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def _token_key(token: str) -> dict[str, dict[str, str]]:
    return {"pk": s(f"token#{token_hash(token)}")}


def _family_key(family_id: str) -> dict[str, dict[str, str]]:
    return {"pk": s(f"family#{family_id}")}


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    family_id: str
    user_id: str
    expires_at: int
    used: bool
    family_revoked: bool


class RefreshTokenStore:
    def __init__(self, client: Any, settings: DynamoSettings) -> None:
        self._client = client
        self._table = settings.refresh_tokens_table

    async def start_family(self, token: str, *, user_id: str, expires_at: int) -> str:
        """Record the first token of a new family (a sign-in); returns the family id."""
        family_id = str(uuid.uuid4())
        with dynamo_errors("start_refresh_family"):
            await self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": {
                                **_family_key(family_id),
                                "user_id": s(user_id),
                                "revoked": {"BOOL": False},
                                "expires_at": n(expires_at),
                            },
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {"Put": self._new_token_put(token, family_id, user_id, expires_at)},
                ]
            )
        return family_id

    async def get(self, token: str, *, now: datetime) -> RefreshRecord | None:
        """The token's record and its family's state; None if unknown or expired."""
        with dynamo_errors("get_refresh_token"):
            response = await self._client.get_item(
                TableName=self._table, Key=_token_key(token), ConsistentRead=True
            )
        item = response.get("Item")
        if item is None or (get_n(item, "expires_at") or 0) <= now.timestamp():
            return None
        family_id = str(get_s(item, "family_id"))
        with dynamo_errors("get_refresh_family"):
            family = (
                await self._client.get_item(
                    TableName=self._table, Key=_family_key(family_id), ConsistentRead=True
                )
            ).get("Item")
        return RefreshRecord(
            family_id=family_id,
            user_id=str(get_s(item, "user_id")),
            expires_at=int(get_n(item, "expires_at") or 0),
            used="used_at" in item,
            # A family that is gone (expired) is as good as revoked.
            family_revoked=family is None or bool(get_bool(family, "revoked")),
        )

    async def rotate(
        self, old: str, new: str, *, record: RefreshRecord, new_expires_at: int, now: datetime
    ) -> None:
        """Spend ``old`` and record ``new`` in its family, atomically.

        ``ConditionFailed`` if ``old`` was spent meanwhile or the family was revoked: the
        caller re-reads to tell which.
        """
        with dynamo_errors("rotate_refresh_token"):
            await self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": _token_key(old),
                            "UpdateExpression": "SET used_at = :now",
                            "ConditionExpression": "attribute_exists(pk) AND "
                            "attribute_not_exists(used_at)",
                            "ExpressionAttributeValues": {":now": n(int(now.timestamp()))},
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": _family_key(record.family_id),
                            "UpdateExpression": "SET expires_at = :exp",
                            "ConditionExpression": "attribute_exists(pk) AND revoked = :no",
                            "ExpressionAttributeValues": {
                                ":exp": n(new_expires_at),
                                ":no": {"BOOL": False},
                            },
                        }
                    },
                    {
                        "Put": self._new_token_put(
                            new, record.family_id, record.user_id, new_expires_at
                        )
                    },
                ]
            )

    async def revoke_family(self, family_id: str) -> bool:
        """Revoke every token of the family; False if it was already revoked or is gone."""
        try:
            with dynamo_errors("revoke_refresh_family"):
                await self._client.update_item(
                    TableName=self._table,
                    Key=_family_key(family_id),
                    UpdateExpression="SET revoked = :yes",
                    ConditionExpression="attribute_exists(pk) AND revoked = :no",
                    ExpressionAttributeValues={":yes": {"BOOL": True}, ":no": {"BOOL": False}},
                )
        except ConditionFailed:
            return False
        return True

    def _new_token_put(
        self, token: str, family_id: str, user_id: str, expires_at: int
    ) -> dict[str, Any]:
        item: Item = {
            **_token_key(token),
            "family_id": s(family_id),
            "user_id": s(user_id),
            "expires_at": n(expires_at),
        }
        return {
            "TableName": self._table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(pk)",
        }
