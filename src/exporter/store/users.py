"""Users in DynamoDB: one item per user, plus one per e-mail address to keep addresses unique."""

from __future__ import annotations

import uuid
from typing import Any

from exporter.config import DynamoSettings
from exporter.dynamodb import DynamoDB
from exporter.models import User
from exporter.store.dynamo import Item, dynamo_errors, format_ts, get_bool, get_s, parse_ts, s


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _user_to_item(user: User) -> Item:
    item: Item = {
        "user_id": s(user.user_id),
        "email": s(user.email),
        "password_hash": s(user.password_hash),
        "active": {"BOOL": user.active},
        "scopes": {"L": [s(x) for x in user.scopes]},
        "created_at": s(format_ts(user.created_at)),
    }
    if user.display_name:
        item["display_name"] = s(user.display_name)
    return item


def _item_to_user(item: dict[str, Any]) -> User:
    return User(
        user_id=str(get_s(item, "user_id")),
        email=str(get_s(item, "email")),
        password_hash=str(get_s(item, "password_hash")),
        active=bool(get_bool(item, "active")),
        scopes=tuple(str(x["S"]) for x in item.get("scopes", {}).get("L", [])),
        created_at=parse_ts(str(get_s(item, "created_at"))),
        display_name=get_s(item, "display_name"),
    )


class UserStore:
    def __init__(self, client: DynamoDB, settings: DynamoSettings) -> None:
        self._client = client
        self._users = settings.users_table
        self._emails = settings.user_emails_table

    async def create(self, user: User) -> None:
        """Write the user and claim the address atomically; ``ConditionFailed`` if taken."""
        with dynamo_errors("create_user"):
            await self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._users,
                            "Item": _user_to_item(user),
                            "ConditionExpression": "attribute_not_exists(user_id)",
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._emails,
                            "Item": {"email": s(user.email), "user_id": s(user.user_id)},
                            "ConditionExpression": "attribute_not_exists(email)",
                        }
                    },
                ]
            )

    async def get(self, user_id: str) -> User | None:
        with dynamo_errors("get_user"):
            response = await self._client.get_item(
                TableName=self._users, Key={"user_id": s(user_id)}, ConsistentRead=True
            )
        item = response.get("Item")
        return None if item is None else _item_to_user(item)

    async def get_by_email(self, email: str) -> User | None:
        """The user with this address. Two reads whether or not it exists, so the answer's
        timing does not tell a registered address from an unknown one."""
        with dynamo_errors("get_user_by_email"):
            response = await self._client.get_item(
                TableName=self._emails,
                Key={"email": s(normalise_email(email))},
                ConsistentRead=True,
            )
        item = response.get("Item")
        if item is None:
            await self.get(f"absent-{uuid.uuid4()}")
            return None
        return await self.get(str(get_s(item, "user_id")))

    async def set_active(self, user_id: str, *, active: bool) -> None:
        """Enable or disable sign-in; a disabled user's refresh tokens stop working at once."""
        with dynamo_errors("set_user_active"):
            await self._client.update_item(
                TableName=self._users,
                Key={"user_id": s(user_id)},
                UpdateExpression="SET active = :active",
                ConditionExpression="attribute_exists(user_id)",
                ExpressionAttributeValues={":active": {"BOOL": active}},
            )
