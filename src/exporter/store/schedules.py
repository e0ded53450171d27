"""Monthly export schedules in DynamoDB (``schedules``): one repository.

Two kinds of item share the table, told apart by their key ``schedule_id``:

- a schedule (its id, a UUID): its settings, the pending run (``due_at``), when the
  scheduler next looks at it (``wake_at``) and its last runs;
- an owner's counter (``owner#{user_id}``): how many schedules the user has, so the
  per-user limit is a condition in the same transaction as the Put, which two racing
  creates cannot both pass.

The scheduler finds due schedules through a sparse index (``due-index``: ``due_shard`` +
``wake_at``), which holds only schedules that are not paused, so a tick reads what is due
and nothing else. A claim is a conditional write on ``wake_at``: of two schedulers that
read the same due schedule, one moves ``wake_at`` to the end of its lease and the other's
condition fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from exporter.config import DynamoSettings
from exporter.dynamodb import DynamoDB
from exporter.errors import ConditionFailed
from exporter.models import ExportFormat
from exporter.schedules.model import (
    LAST_DAY,
    DayOfMonth,
    PauseReason,
    RunOutcome,
    Schedule,
    ScheduleRun,
)
from exporter.store.dynamo import Item, dynamo_errors, format_ts, get_n, get_s, n, parse_ts, s
from exporter.store.tables import SCHEDULE_DUE_INDEX, SCHEDULE_USER_INDEX

# Sparse: only schedules that are not paused carry ``due_shard`` (and ``wake_at``).
DUE_SHARD_ATTRIBUTE = "due_shard"
WAKE_ATTRIBUTE = "wake_at"
# One partition of the index: ~10,000 wake-ups a day are far below what one partition
# takes (1,000 writes/s); shard the value if that ever changes.
DUE_SHARD = "due"
_OWNER = "owner#"


def _day_to_attr(day: int | str) -> dict[str, str]:
    return s(LAST_DAY) if day == LAST_DAY else n(int(day))


def _run_to_attr(run: ScheduleRun) -> dict[str, Any]:
    fields: Item = {
        "due_at": s(format_ts(run.due_at)),
        "ran_at": s(format_ts(run.ran_at)),
        "outcome": s(run.outcome.value),
    }
    if run.export_id is not None:
        fields["export_id"] = s(run.export_id)
    return {"M": fields}


def _attr_to_run(attr: Mapping[str, Any]) -> ScheduleRun:
    fields = attr["M"]
    return ScheduleRun(
        due_at=parse_ts(str(get_s(fields, "due_at"))),
        ran_at=parse_ts(str(get_s(fields, "ran_at"))),
        outcome=RunOutcome(str(get_s(fields, "outcome"))),
        export_id=get_s(fields, "export_id"),
    )


def schedule_to_item(schedule: Schedule) -> Item:
    item: Item = {
        "schedule_id": s(schedule.schedule_id),
        "user_id": s(schedule.user_id),
        "frequency": s(schedule.frequency),
        "day_of_month": _day_to_attr(schedule.day_of_month),
        "time_zone": s(schedule.time_zone),
        "format": s(schedule.format.value),
        "bom": {"BOOL": schedule.bom},
        "created_at": s(format_ts(schedule.created_at)),
        "updated_at": s(format_ts(schedule.updated_at)),
        "attempt": n(schedule.attempt),
        "runs": {"L": [_run_to_attr(r) for r in schedule.runs]},
    }
    if schedule.paused_reason is not None:
        item["paused_reason"] = s(schedule.paused_reason.value)
    if schedule.due_at is not None:
        item["due_at"] = s(format_ts(schedule.due_at))
    if schedule.wake_at is not None and schedule.paused_reason is None:
        item[WAKE_ATTRIBUTE] = s(format_ts(schedule.wake_at))
        item[DUE_SHARD_ATTRIBUTE] = s(DUE_SHARD)
    if schedule.claim_id is not None:
        item["claim_id"] = s(schedule.claim_id)
    return item


def item_to_schedule(item: Mapping[str, Mapping[str, Any]]) -> Schedule:
    def ts(name: str) -> datetime | None:
        raw = get_s(item, name)
        return None if raw is None else parse_ts(raw)

    day_attr = item["day_of_month"]
    day: DayOfMonth = LAST_DAY if "S" in day_attr else int(day_attr["N"])
    reason = get_s(item, "paused_reason")
    return Schedule(
        schedule_id=str(get_s(item, "schedule_id")),
        user_id=str(get_s(item, "user_id")),
        frequency=str(get_s(item, "frequency")),
        day_of_month=day,
        time_zone=str(get_s(item, "time_zone")),
        format=ExportFormat(str(get_s(item, "format"))),
        bom=bool(item.get("bom", {}).get("BOOL", False)),
        created_at=parse_ts(str(get_s(item, "created_at"))),
        updated_at=parse_ts(str(get_s(item, "updated_at"))),
        paused_reason=None if reason is None else PauseReason(reason),
        due_at=ts("due_at"),
        wake_at=ts(WAKE_ATTRIBUTE),
        attempt=get_n(item, "attempt") or 0,
        claim_id=get_s(item, "claim_id"),
        runs=tuple(_attr_to_run(r) for r in item.get("runs", {}).get("L", [])),
    )


class ScheduleStore:
    """Create, read, claim, record and change schedules; store errors only."""

    def __init__(self, client: DynamoDB, settings: DynamoSettings) -> None:
        self._client = client
        self._table = settings.schedules_table

    async def create(self, schedule: Schedule, *, max_per_user: int) -> None:
        """Write a new schedule and count it against its owner; ``ConditionFailed`` when the
        owner already has ``max_per_user``."""
        with dynamo_errors("create_schedule"):
            await self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"schedule_id": s(_OWNER + schedule.user_id)},
                            "UpdateExpression": "SET schedules = if_not_exists(schedules, :zero)"
                            " + :one",
                            "ConditionExpression": "attribute_not_exists(schedules)"
                            " OR schedules < :max",
                            "ExpressionAttributeValues": {
                                ":zero": n(0),
                                ":one": n(1),
                                ":max": n(max_per_user),
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": schedule_to_item(schedule),
                            "ConditionExpression": "attribute_not_exists(schedule_id)",
                        }
                    },
                ]
            )

    async def get(self, schedule_id: str) -> Schedule | None:
        if schedule_id.startswith(_OWNER):
            return None
        with dynamo_errors("get_schedule"):
            response = await self._client.get_item(
                TableName=self._table, Key={"schedule_id": s(schedule_id)}, ConsistentRead=True
            )
        item = response.get("Item")
        return None if item is None else item_to_schedule(item)

    async def list_for_user(self, user_id: str) -> list[Schedule]:
        """The user's schedules, oldest first (a handful: the per-user limit bounds them)."""
        items: list[Schedule] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": SCHEDULE_USER_INDEX,
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": s(user_id)},
        }
        with dynamo_errors("list_schedules"):
            async for page in self._client.pages("Query", **kwargs):
                items.extend(item_to_schedule(i) for i in page.get("Items", []))
        return items

    async def list_all(self, *, limit: int = 1000) -> list[Schedule]:
        """Every schedule, up to ``limit`` (the operator's list; a scan, never per tick)."""
        items: list[Schedule] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "attribute_exists(user_id)",
        }
        with dynamo_errors("scan_schedules"):
            async for page in self._client.pages("Scan", **kwargs):
                items.extend(item_to_schedule(i) for i in page.get("Items", []))
                if len(items) >= limit:
                    break
        return sorted(items, key=lambda sch: sch.created_at)[:limit]

    async def due(self, now: datetime, *, limit: int) -> list[Schedule]:
        """Schedules whose ``wake_at`` has come, earliest first, from the sparse index
        (eventually consistent: a claim re-checks against the table)."""
        found: list[Schedule] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": SCHEDULE_DUE_INDEX,
            "KeyConditionExpression": (
                f"{DUE_SHARD_ATTRIBUTE} = :shard AND {WAKE_ATTRIBUTE} <= :now"
            ),
            "ExpressionAttributeValues": {":shard": s(DUE_SHARD), ":now": s(format_ts(now))},
        }
        while len(found) < limit:
            kwargs["Limit"] = limit - len(found)
            with dynamo_errors("query_due_schedules"):
                response = await self._client.query(**kwargs)
            found.extend(item_to_schedule(i) for i in response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if last is None:
                break
            kwargs["ExclusiveStartKey"] = last
        return found

    async def claim(
        self, schedule_id: str, *, seen_wake_at: datetime, claim_id: str, lease_until: datetime
    ) -> Schedule:
        """Take the run of a due schedule: ``wake_at`` moves from what the caller saw to the
        end of the lease, in one conditional write. ``ConditionFailed`` when another
        scheduler took it first, or it was paused, changed or deleted meanwhile."""
        with dynamo_errors("claim_schedule"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"schedule_id": s(schedule_id)},
                UpdateExpression=f"SET {WAKE_ATTRIBUTE} = :lease, claim_id = :claim",
                ConditionExpression=f"{WAKE_ATTRIBUTE} = :seen",
                ExpressionAttributeValues={
                    ":seen": s(format_ts(seen_wake_at)),
                    ":lease": s(format_ts(lease_until)),
                    ":claim": s(claim_id),
                },
                ReturnValues="ALL_NEW",
            )
        return item_to_schedule(response["Attributes"])

    async def finish(
        self,
        schedule_id: str,
        *,
        claim_id: str,
        runs: tuple[ScheduleRun, ...],
        due_at: datetime,
        wake_at: datetime,
        attempt: int,
        now: datetime,
    ) -> None:
        """Record a claimed run and set the next one, if the claim still holds;
        ``ConditionFailed`` when a pause, a change or a delete came in between."""
        with dynamo_errors("finish_schedule_run"):
            await self._client.update_item(
                TableName=self._table,
                Key={"schedule_id": s(schedule_id)},
                UpdateExpression=(
                    f"SET runs = :runs, due_at = :due, {WAKE_ATTRIBUTE} = :wake, "
                    "attempt = :attempt, last_run_at = :now REMOVE claim_id"
                ),
                ConditionExpression=f"claim_id = :claim AND attribute_exists({WAKE_ATTRIBUTE})",
                ExpressionAttributeValues={
                    ":runs": {"L": [_run_to_attr(r) for r in runs]},
                    ":due": s(format_ts(due_at)),
                    ":wake": s(format_ts(wake_at)),
                    ":attempt": n(attempt),
                    ":now": s(format_ts(now)),
                    ":claim": s(claim_id),
                },
            )

    async def append_run(self, schedule_id: str, run: ScheduleRun) -> None:
        """Record a run on a schedule whose claim was lost (paused or changed meanwhile), so
        the export it made is still visible; the list is trimmed at the next ``finish``,
        which rewrites it whole."""
        try:
            with dynamo_errors("append_schedule_run"):
                await self._client.update_item(
                    TableName=self._table,
                    Key={"schedule_id": s(schedule_id)},
                    UpdateExpression="SET runs = list_append(if_not_exists(runs, :empty), :run)"
                    " REMOVE claim_id",
                    ConditionExpression="attribute_exists(schedule_id)",
                    ExpressionAttributeValues={
                        ":empty": {"L": []},
                        ":run": {"L": [_run_to_attr(run)]},
                    },
                )
        except ConditionFailed:
            pass  # deleted meanwhile: nothing to record on

    async def update_settings(self, schedule: Schedule) -> Schedule:
        """Write a changed schedule's settings and its recomputed next run (any claim on the
        old timing is dropped: its scheduler records the run without moving the next one);
        ``ConditionFailed`` when it is gone or not the owner's."""
        values: Item = {
            ":u": s(schedule.user_id),
            ":day": _day_to_attr(schedule.day_of_month),
            ":tz": s(schedule.time_zone),
            ":fmt": s(schedule.format.value),
            ":bom": {"BOOL": schedule.bom},
            ":now": s(format_ts(schedule.updated_at)),
        }
        sets = [
            "day_of_month = :day",
            "time_zone = :tz",
            "#fmt = :fmt",
            "bom = :bom",
            "updated_at = :now",
        ]
        removes = ["claim_id"]
        if schedule.paused_reason is None and schedule.due_at is not None:
            values |= {
                ":due": s(format_ts(schedule.due_at)),
                ":wake": s(format_ts(schedule.wake_at or schedule.due_at)),
                ":shard": s(DUE_SHARD),
                ":zero": n(0),
            }
            sets += [
                "due_at = :due",
                f"{WAKE_ATTRIBUTE} = :wake",
                f"{DUE_SHARD_ATTRIBUTE} = :shard",
                "attempt = :zero",
            ]
        with dynamo_errors("update_schedule"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"schedule_id": s(schedule.schedule_id)},
                UpdateExpression=f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
                ConditionExpression="user_id = :u",
                ExpressionAttributeNames={"#fmt": "format"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return item_to_schedule(response["Attributes"])

    async def pause(
        self, schedule_id: str, *, reason: PauseReason, now: datetime, user_id: str | None = None
    ) -> Schedule:
        """Take the schedule out of the scheduler's index (it keeps its runs). ``user_id``
        makes it the owner's act: ``ConditionFailed`` if it is not theirs (or gone)."""
        condition = "attribute_exists(schedule_id)"
        values: Item = {":reason": s(reason.value), ":now": s(format_ts(now))}
        if user_id is not None:
            condition = "user_id = :u"
            values[":u"] = s(user_id)
        with dynamo_errors("pause_schedule"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"schedule_id": s(schedule_id)},
                UpdateExpression=(
                    "SET paused_reason = :reason, updated_at = :now "
                    f"REMOVE {WAKE_ATTRIBUTE}, {DUE_SHARD_ATTRIBUTE}, due_at, claim_id"
                ),
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return item_to_schedule(response["Attributes"])

    async def resume(
        self, schedule_id: str, *, due_at: datetime, now: datetime, user_id: str | None = None
    ) -> Schedule:
        """Put the schedule back in the index with its next run at ``due_at``."""
        condition = "attribute_exists(schedule_id)"
        values: Item = {
            ":due": s(format_ts(due_at)),
            ":shard": s(DUE_SHARD),
            ":now": s(format_ts(now)),
            ":zero": n(0),
        }
        if user_id is not None:
            condition = "user_id = :u"
            values[":u"] = s(user_id)
        with dynamo_errors("resume_schedule"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"schedule_id": s(schedule_id)},
                UpdateExpression=(
                    f"SET due_at = :due, {WAKE_ATTRIBUTE} = :due, "
                    f"{DUE_SHARD_ATTRIBUTE} = :shard, attempt = :zero, updated_at = :now "
                    "REMOVE paused_reason, claim_id"
                ),
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return item_to_schedule(response["Attributes"])

    async def delete(self, schedule_id: str, *, user_id: str) -> None:
        """Delete the user's schedule and uncount it; ``ConditionFailed`` if not theirs."""
        with dynamo_errors("delete_schedule"):
            await self._client.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self._table,
                            "Key": {"schedule_id": s(schedule_id)},
                            "ConditionExpression": "user_id = :u",
                            "ExpressionAttributeValues": {":u": s(user_id)},
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"schedule_id": s(_OWNER + user_id)},
                            "UpdateExpression": "ADD schedules :minus",
                            "ExpressionAttributeValues": {":minus": n(-1)},
                        }
                    },
                ]
            )
