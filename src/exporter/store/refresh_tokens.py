"""Refresh tokens in DynamoDB: single use, grouped in families, stored only as hashes.

One table, three kinds of item under the key ``pk``:

    token#<sha256 of the token>   family_id, user_id, expires_at, issued_at, used_at (once rotated)
    family#<uuid>                 user_id, revoked, expires_at (the newest token's expiry),
                                  head (hash of its newest token), head_at (when it was issued)
    revoked#<family uuid>         revoked_at, expires_at: a revocation no later write undoes

A sign-in starts a family. A refresh marks the presented token used, checks the family is not
revoked and that the token is its head, and stores its successor, all in one transaction.
Presenting a used token again is reuse: someone kept a copy, so the whole family is revoked
and both parties must sign in. ``expires_at`` is the DynamoDB TTL attribute; TTL deletes with
a lag, so reads check it too.

Two regions (a global table, last writer wins per item; docs/operations.md). A transaction is
atomic only in its own region, so the same token refreshed in both regions within the
replication window (about a second) succeeds twice: two successors, a fork. The safe side:

- the family's ``head`` names its newest token. Both rotations rewrite the family item, last
  writer wins keeps one head, and the other branch's token, once seen again in either
  region, is not the head although unused: that is reuse, and the family is revoked. A fork
  lives at most until its losing branch is next presented (never longer than a refresh).
- a token newer than the head it should have replaced (``issued_at`` after ``head_at``) is
  a rotation whose family write has not replicated yet: the caller is asked to retry, and
  nothing is revoked.
- revocation is written as its own item (``revoked#``), never rewritten by a rotation, so a
  rotation racing a sign-out or a reuse detection in the other region cannot undo it the
  way it could undo the family item's ``revoked`` flag.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exporter.config import DynamoSettings
from exporter.dynamodb import DynamoDB
from exporter.errors import ConditionFailed
from exporter.store.dynamo import Item, dynamo_errors, get_bool, get_n, get_s, n, s

# A revocation outlives every token of its family: refresh tokens live 30 days by default
# (jwt.refresh_ttl_s); a tombstone lives 90, after which TTL removes it.
_TOMBSTONE_TTL_S = 90 * 24 * 3600


def _ms(now: datetime | None) -> int:
    """Epoch milliseconds: the order of a family's tokens (``issued_at``, ``head_at``)."""
    return int((now.timestamp() if now is not None else time.time()) * 1000)


def token_hash(token: str) -> str:
    """What we store instead of the token. Tokens carry 122 random bits (their ``jti``) and a
    signature, so a plain SHA-256 cannot be reversed or guessed; no salt is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def _token_key(token: str) -> dict[str, dict[str, str]]:
    return {"pk": s(f"token#{token_hash(token)}")}


def _family_key(family_id: str) -> dict[str, dict[str, str]]:
    return {"pk": s(f"family#{family_id}")}


def _revoked_key(family_id: str) -> dict[str, dict[str, str]]:
    return {"pk": s(f"revoked#{family_id}")}


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    family_id: str
    user_id: str
    expires_at: int
    used: bool
    family_revoked: bool
    # Two regions (see the module docstring): the token is not its family's newest although
    # unused (its branch lost a cross-region race: treat as reuse), or is newer than the
    # family item this region has seen so far (replication in flight: retry).
    forked: bool = False
    family_behind: bool = False


class RefreshTokenStore:
    def __init__(self, client: DynamoDB, settings: DynamoSettings) -> None:
        self._client = client
        self._table = settings.refresh_tokens_table

    async def start_family(
        self, token: str, *, user_id: str, expires_at: int, now: datetime | None = None
    ) -> str:
        """Record the first token of a new family (a sign-in); returns the family id."""
        family_id = str(uuid.uuid4())
        issued_at = _ms(now)
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
                                "head": s(token_hash(token)),
                                "head_at": n(issued_at),
                            },
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Put": self._new_token_put(
                            token, family_id, user_id, expires_at, issued_at=issued_at
                        )
                    },
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
            tombstone = (
                await self._client.get_item(
                    TableName=self._table, Key=_revoked_key(family_id), ConsistentRead=True
                )
            ).get("Item")
        used = "used_at" in item
        head, head_at = (
            (get_s(family, "head"), get_n(family, "head_at")) if family else (None, None)
        )
        issued_at = get_n(item, "issued_at")
        # Families and tokens from before heads existed are never called forked.
        not_head = head is not None and head != token_hash(token) and not used
        behind = not_head and issued_at is not None and head_at is not None and issued_at > head_at
        return RefreshRecord(
            family_id=family_id,
            user_id=str(get_s(item, "user_id")),
            expires_at=int(get_n(item, "expires_at") or 0),
            used=used,
            # A family that is gone (expired) is as good as revoked.
            family_revoked=family is None
            or bool(get_bool(family, "revoked"))
            or tombstone is not None,
            forked=not_head and not behind,
            family_behind=behind,
        )

    async def rotate(
        self, old: str, new: str, *, record: RefreshRecord, new_expires_at: int, now: datetime
    ) -> None:
        """Spend ``old`` and record ``new`` in its family, atomically.

        ``ConditionFailed`` if ``old`` was spent meanwhile, the family was revoked or moved
        on to another head: the caller re-reads to tell which.
        """
        issued_at = _ms(now)
        family_values: dict[str, Any] = {
            ":exp": n(new_expires_at),
            ":no": {"BOOL": False},
            ":head": s(token_hash(new)),
            ":head_at": n(issued_at),
            ":old": s(token_hash(old)),
        }
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
                            "UpdateExpression": "SET expires_at = :exp, head = :head, "
                            "head_at = :head_at",
                            "ConditionExpression": "attribute_exists(pk) AND revoked = :no "
                            "AND (attribute_not_exists(head) OR head = :old)",
                            "ExpressionAttributeValues": family_values,
                        }
                    },
                    {
                        "ConditionCheck": {
                            "TableName": self._table,
                            "Key": _revoked_key(record.family_id),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Put": self._new_token_put(
                            new,
                            record.family_id,
                            record.user_id,
                            new_expires_at,
                            issued_at=issued_at,
                        )
                    },
                ]
            )

    async def revoke_family(self, family_id: str, *, expires_at: int | None = None) -> bool:
        """Revoke every token of the family; False if it was already revoked or is gone.

        The revocation is also its own item, written unconditionally, so that no rotation
        racing it in another region can undo it (last writer wins rewrites the family item);
        it lives until ``expires_at`` (default: the longest a refresh token can live)."""
        tombstone_expires = expires_at or int(time.time()) + _TOMBSTONE_TTL_S
        with dynamo_errors("revoke_refresh_family"):
            await self._client.put_item(
                TableName=self._table,
                Item={
                    **_revoked_key(family_id),
                    "revoked_at": n(int(time.time())),
                    "expires_at": n(tombstone_expires),
                },
            )
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
        self, token: str, family_id: str, user_id: str, expires_at: int, *, issued_at: int
    ) -> dict[str, Any]:
        item: Item = {
            **_token_key(token),
            "family_id": s(family_id),
            "user_id": s(user_id),
            "expires_at": n(expires_at),
            "issued_at": n(issued_at),
        }
        return {
            "TableName": self._table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(pk)",
        }
