"""Export job records in DynamoDB: the source of truth for what a user asked and where it is.

Every state change is a conditional update, so a job delivered twice cannot regress or
finish twice: the loser of a race gets ``ConditionFailed``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporter.config import DynamoSettings
from exporter.dynamodb import DynamoDB, DynamoError
from exporter.errors import ConditionFailed, InvalidCursor, StoreError
from exporter.models import ExportFormat, ExportJob, JobState, sources_of
from exporter.selection import ALL, ExportSelection
from exporter.store.dynamo import Item, dynamo_errors, format_ts, get_n, get_s, n, parse_ts, s
from exporter.store.tables import ACTIVE_ATTRIBUTE, ACTIVE_INDEX, USER_CREATED_INDEX

# Optional attributes written by transitions: name -> how to encode
_TIMESTAMP_FIELDS = (
    "started_at",
    "finished_at",
    "updated_at",
    "heartbeat_at",
    "email_sent_at",
    "file_expires_at",
    "last_downloaded_at",
    "file_stored_at",
    "next_attempt_at",
    "notice_next_attempt_at",
    "requeued_at",
)
_INT_FIELDS = (
    "attempts",
    "row_count",
    "byte_size",
    "rows_exported",
    "total_rows",
    "download_count",
    "retries",
    "estimated_rows",
)
_STR_FIELDS = (
    "file_name",
    "delivery",
    "error_code",
    "error_message",
    "file_key",
    "sha256",
    "delivery_error_code",
    "delivery_error_message",
    "last_error",
    "worker_id",
    "home_region",
    "file_region",
    "schedule_id",
)
_BOOL_FIELDS = ("bom", "large")
# What one run leaves on the record; a requeued job starts without it.
_RUN_OUTCOME_FIELDS = (
    "started_at",
    "finished_at",
    "row_count",
    "byte_size",
    "file_name",
    "delivery",
    "error_code",
    "error_message",
    "rows_exported",
    "total_rows",
    "heartbeat_at",
    "email_sent_at",
    "file_key",
    "file_expires_at",
    "sha256",
    "delivery_error_code",
    "delivery_error_message",
    "file_stored_at",
    "next_attempt_at",
    "last_error",
    "retries",
    "notice_next_attempt_at",
    "worker_id",
    "file_region",
)


def job_to_item(job: ExportJob) -> Item:
    item: Item = {
        "job_id": s(job.job_id),
        "user_id": s(job.user_id),
        "status": s(job.status.value),
        "format": s(job.format.value),
        "created_at": s(format_ts(job.created_at)),
        # Epoch seconds: DynamoDB TTL deletes the record some time after this.
        "expires_at": n(int(job.expires_at.timestamp())),
    }
    item.update(_encode_fields(job_fields(job)))
    if not job.selection.is_all:
        # One JSON string (columns, filters, time zone), parsed and re-checked on read.
        item["selection"] = s(job.selection.to_json())
    if job.status.is_active:
        item[ACTIVE_ATTRIBUTE] = s(job.status.value)
    return item


def job_fields(job: ExportJob) -> dict[str, Any]:
    names = (*_TIMESTAMP_FIELDS, *_INT_FIELDS, *_STR_FIELDS, *_BOOL_FIELDS)
    fields = {f: getattr(job, f) for f in names}
    return {k: v for k, v in fields.items() if v is not None and v is not False}


def _encode_fields(fields: Mapping[str, Any]) -> Item:
    item: Item = {}
    for name, value in fields.items():
        if name in _TIMESTAMP_FIELDS:
            item[name] = s(format_ts(value))
        elif name in _INT_FIELDS:
            item[name] = n(int(value))
        elif name in _STR_FIELDS:
            item[name] = s(str(value))
        elif name in _BOOL_FIELDS:
            item[name] = {"BOOL": bool(value)}
        else:
            raise ValueError(f"unknown job field {name!r}")
    return item


def item_to_job(item: Mapping[str, Mapping[str, Any]]) -> ExportJob:
    def ts(name: str) -> datetime | None:
        raw = get_s(item, name)
        return None if raw is None else parse_ts(raw)

    return ExportJob(
        job_id=str(get_s(item, "job_id")),
        user_id=str(get_s(item, "user_id")),
        status=JobState(str(get_s(item, "status"))),
        format=ExportFormat(str(get_s(item, "format"))),
        created_at=parse_ts(str(get_s(item, "created_at"))),
        expires_at=datetime.fromtimestamp(get_n(item, "expires_at") or 0, UTC),
        started_at=ts("started_at"),
        finished_at=ts("finished_at"),
        updated_at=ts("updated_at"),
        attempts=get_n(item, "attempts") or 0,
        row_count=get_n(item, "row_count"),
        byte_size=get_n(item, "byte_size"),
        file_name=get_s(item, "file_name"),
        delivery=get_s(item, "delivery"),
        error_code=get_s(item, "error_code"),
        error_message=get_s(item, "error_message"),
        bom=bool(item.get("bom", {}).get("BOOL", False)),
        rows_exported=get_n(item, "rows_exported"),
        total_rows=get_n(item, "total_rows"),
        heartbeat_at=ts("heartbeat_at"),
        email_sent_at=ts("email_sent_at"),
        file_key=get_s(item, "file_key"),
        file_expires_at=ts("file_expires_at"),
        download_count=get_n(item, "download_count") or 0,
        last_downloaded_at=ts("last_downloaded_at"),
        sha256=get_s(item, "sha256"),
        delivery_error_code=get_s(item, "delivery_error_code"),
        delivery_error_message=get_s(item, "delivery_error_message"),
        file_stored_at=ts("file_stored_at"),
        next_attempt_at=ts("next_attempt_at"),
        last_error=get_s(item, "last_error"),
        retries=get_n(item, "retries") or 0,
        notice_next_attempt_at=ts("notice_next_attempt_at"),
        requeued_at=ts("requeued_at"),
        worker_id=get_s(item, "worker_id"),
        schedule_id=get_s(item, "schedule_id"),
        estimated_rows=get_n(item, "estimated_rows"),
        large=bool(item.get("large", {}).get("BOOL", False)),
        home_region=get_s(item, "home_region"),
        file_region=get_s(item, "file_region"),
        selection=_selection(get_s(item, "selection")),
    )


def _selection(raw: str | None) -> ExportSelection:
    """A record from before issue 17 has none: every column, every row, UTC."""
    return ALL if raw is None else ExportSelection.from_json(raw)


@dataclass(frozen=True, slots=True)
class CurrentExport:
    """A user's export slot as read: the job id it names (None: never claimed, or expired)
    and that job's record (None also when the record is gone)."""

    slot_job_id: str | None
    job: ExportJob | None

    @property
    def active(self) -> ExportJob | None:
        """The user's queued or running export, if there is one."""
        return self.job if self.job is not None and self.job.status.is_active else None


@dataclass(frozen=True, slots=True)
class UserSlot:
    """A user's export slot as read, without the job it names: the job id (None: never
    claimed, or expired) and when the user's recent exports were created (job id -> time;
    None for a slot written before the slot kept them: count from the jobs instead)."""

    job_id: str | None
    recent: dict[str, datetime] | None
    # The size counted for the user's last export (routing): the size to route by when a
    # count cannot answer in time (a user's memberships change little month to month).
    estimated_rows: int | None = None


class SlotTaken(ConditionFailed):
    """``create_exclusive`` found the job the slot names still queued or running."""

    def __init__(self, active: ExportJob) -> None:
        super().__init__("the user has an active export")
        self.active = active


class JobRefused(ConditionFailed):
    """A conditional write of a job was refused, and ``current`` is the record as DynamoDB
    found it (``ReturnValuesOnConditionCheckFailure``), None when there is no record: the
    caller can tell why without reading it."""

    def __init__(self, operation: str, current: ExportJob | None) -> None:
        super().__init__(operation)
        self.current = current


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[ExportJob]
    next_cursor: str | None


class JobStore:
    """Create, read, list and move export jobs."""

    def __init__(
        self,
        client: DynamoDB,
        settings: DynamoSettings,
        *,
        cursor_key: bytes | None = None,
        home_region: str | None = None,
    ) -> None:
        """``cursor_key`` signs page cursors; every process that serves a user's pages needs
        the same one (``derive_cursor_key``). Without it, one of this process's own.
        ``home_region`` (two regions: ``Settings.region``) is stamped on every job created
        here that names none, so whoever creates a job, its region owns it (regions.py)."""
        self._client = client
        self._table = settings.jobs_table
        self._slots = settings.export_slots_table
        self._cursor_key = cursor_key or _PROCESS_CURSOR_KEY
        self._home_region = home_region

    def _new_item(self, job: ExportJob) -> Item:
        if job.home_region is None and self._home_region is not None:
            job = job.replace(home_region=self._home_region)
        return job_to_item(job)

    async def create(self, job: ExportJob) -> None:
        with dynamo_errors("create_job"):
            await self._client.put_item(
                TableName=self._table,
                Item=self._new_item(job),
                ConditionExpression="attribute_not_exists(job_id)",
            )

    async def current_for_user(self, user_id: str) -> CurrentExport:
        """What the user's slot names: the id, and the record if it still exists."""
        with dynamo_errors("get_slot"):
            response = await self._client.get_item(
                TableName=self._slots, Key={"user_id": s(user_id)}, ConsistentRead=True
            )
        slot_job_id = get_s(response.get("Item") or {}, "job_id")
        job = None if slot_job_id is None else await self.get(slot_job_id)
        return CurrentExport(slot_job_id=slot_job_id, job=job)

    async def read_slot(self, user_id: str) -> UserSlot:
        """The user's slot alone (one consistent read): what ``create_exclusive`` needs."""
        with dynamo_errors("get_slot"):
            response = await self._client.get_item(
                TableName=self._slots, Key={"user_id": s(user_id)}, ConsistentRead=True
            )
        item = response.get("Item") or {}
        recent: dict[str, datetime] | None = None
        if "recent" in item:
            recent = {k: parse_ts(v["S"]) for k, v in item["recent"]["M"].items()}
        elif not item:
            recent = {}  # a free slot: no export of the user's counts any more
        return UserSlot(
            job_id=get_s(item, "job_id"),
            recent=recent,
            estimated_rows=get_n(item, "estimated_rows"),
        )

    async def create_exclusive(
        self,
        job: ExportJob,
        *,
        previous: str | None,
        recent: Mapping[str, datetime] | None = None,
        also: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Create ``job`` and make it the user's current export, in one transaction.

        ``previous`` is the slot's job id as read (None: no slot). The slot's condition is
        that it still says so, and the transaction checks that the job it names is finished
        or gone: if that job is still active the transaction is refused with ``SlotTaken``
        (carrying that job, so the caller needs no read); if another create got in first,
        with ``ConditionFailed``, or ``WriteConflict`` when the two collided in flight (the
        caller reads again). ``recent`` (job id -> created at, this job included) is kept on
        the slot: the daily quota counts from it.
        """
        slot_item: Item = {
            "user_id": s(job.user_id),
            "job_id": s(job.job_id),
            # The slot goes (TTL) with the job it names; a missing slot is a free one.
            "expires_at": n(int(job.expires_at.timestamp())),
        }
        if recent is not None:
            slot_item["recent"] = {"M": {k: s(format_ts(v)) for k, v in recent.items()}}
        if job.estimated_rows is not None:
            slot_item["estimated_rows"] = n(job.estimated_rows)
        slot: dict[str, Any] = {"TableName": self._slots, "Item": slot_item}
        if previous is None:
            slot["ConditionExpression"] = "attribute_not_exists(user_id)"
        else:
            slot["ConditionExpression"] = "job_id = :previous"
            slot["ExpressionAttributeValues"] = {":previous": s(previous)}
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": self._new_item(job),
                    "ConditionExpression": "attribute_not_exists(job_id)",
                }
            },
            {"Put": slot},
            *(dict(item) for item in also),
        ]
        if previous is not None:
            items.append(
                {
                    "ConditionCheck": {
                        "TableName": self._table,
                        "Key": {"job_id": s(previous)},
                        "ConditionExpression": (
                            "attribute_not_exists(job_id) OR NOT #status IN (:queued, :running)"
                        ),
                        "ExpressionAttributeNames": {"#status": "status"},
                        "ExpressionAttributeValues": {
                            ":queued": s(JobState.QUEUED.value),
                            ":running": s(JobState.IN_PROGRESS.value),
                        },
                        # A refusal returns the active job: the answer, without a read.
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
            )
        with dynamo_errors("create_job"):
            try:
                await self._client.transact_write_items(TransactItems=items)
            except DynamoError as exc:
                active = _active_from(exc, check_index=len(items) - 1)
                if previous is not None and active is not None:
                    raise SlotTaken(active) from exc
                raise

    async def forget_created(self, user_id: str, job_id: str) -> None:
        """Take ``job_id`` out of the slot's recent exports (it could not be queued, so it
        does not count against the quota), if the slot still names it."""
        with dynamo_errors("forget_created"):
            await self._client.update_item(
                TableName=self._slots,
                Key={"user_id": s(user_id)},
                UpdateExpression="REMOVE recent.#job",
                ConditionExpression="job_id = :job AND attribute_exists(recent)",
                ExpressionAttributeNames={"#job": job_id},
                ExpressionAttributeValues={":job": s(job_id)},
            )

    async def created_since(
        self, user_id: str, since: datetime, *, limit: int, excluding_error: str | None = None
    ) -> list[ExportJob]:
        """Up to ``limit`` of the user's jobs created at or after ``since``, oldest first,
        leaving out those that failed with ``excluding_error``.

        A GSI read, so eventually consistent: a job created a moment ago may be missing.
        """
        found: list[ExportJob] = []
        values = {":u": s(user_id), ":since": s(format_ts(since))}
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": USER_CREATED_INDEX,
            "KeyConditionExpression": "user_id = :u AND created_at >= :since",
            "ExpressionAttributeValues": values,
            "ScanIndexForward": True,
            "Limit": limit,
        }
        if excluding_error is not None:
            query["FilterExpression"] = "attribute_not_exists(error_code) OR error_code <> :e"
            values[":e"] = s(excluding_error)
        with dynamo_errors("count_jobs"):
            async for page in self._client.pages("Query", **query):
                found.extend(item_to_job(i) for i in page.get("Items", []))
                if len(found) >= limit:
                    break
        return found[:limit]

    async def get(self, job_id: str) -> ExportJob | None:
        with dynamo_errors("get_job"):
            response = await self._client.get_item(
                TableName=self._table, Key={"job_id": s(job_id)}, ConsistentRead=True
            )
        item = response.get("Item")
        return None if item is None else item_to_job(item)

    async def get_for_user(self, job_id: str, user_id: str) -> ExportJob | None:
        """The job if it exists *and* belongs to ``user_id``; otherwise None (never a hint)."""
        job = await self.get(job_id)
        return job if job is not None and job.user_id == user_id else None

    async def list_for_user(
        self, user_id: str, *, limit: int, cursor: str | None = None
    ) -> JobPage:
        """The user's jobs, newest first, one page at a time."""
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": USER_CREATED_INDEX,
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": s(user_id)},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor is not None:
            query["ExclusiveStartKey"] = _decode_cursor(cursor, user_id, key=self._cursor_key)
        try:
            with dynamo_errors("list_jobs"):
                response = await self._client.query(**query)
        except StoreError as exc:
            # Only a cursor can make this query one DynamoDB refuses as invalid (the rest is
            # ours): the caller's fault, never an outage. Signed cursors make it unreachable.
            if cursor is not None and "ValidationException" in str(exc):
                raise InvalidCursor("The page cursor is not valid.") from exc
            raise
        last = response.get("LastEvaluatedKey")
        return JobPage(
            jobs=[item_to_job(i) for i in response.get("Items", [])],
            next_cursor=_encode_cursor(last, key=self._cursor_key) if last else None,
        )

    async def transition(
        self,
        job_id: str,
        *,
        to: JobState,
        expected: Collection[JobState] | None = None,
        now: datetime,
        fields: Mapping[str, Any] | None = None,
        clear: Collection[str] = (),
        increment_attempts: bool = False,
        unsent_only: bool = False,
        if_absent: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        home_region: str | None = None,
        attempt: int | None = None,
        return_current: bool = False,
    ) -> ExportJob:
        """Move a job to ``to`` if it is in one of ``expected`` (default: every legal source).
        With ``unsent_only``, also only while no run has recorded ``email_sent_at``: a job
        whose file was mailed must never be failed (its file would then be deleted).

        ``fields`` are set; ``if_absent`` only where the record has no such attribute yet.
        Further conditions, each only when given: the job belongs to ``user_id``; it is homed
        in ``home_region`` or nowhere (a job from before regions); its ``attempts`` are
        ``attempt`` (the run that owns it).

        Raises ``ConditionFailed`` when the job is missing or in any other state; with
        ``return_current``, ``JobRefused`` carrying the record as it was (no read needed).
        """
        allowed = sorted(expected if expected is not None else sources_of(to))
        if not allowed:
            raise ValueError(f"no state may move to {to}")
        values: dict[str, Any] = {":to": s(to.value)}
        names = {"#status": "status", "#active": ACTIVE_ATTRIBUTE}
        sets = ["#status = :to"]
        removes = []
        # The sparse active index holds a job exactly while it is queued or in progress.
        if to.is_active:
            sets.append("#active = :to")
        else:
            removes.append("#active")
        encoded = _encode_fields({"updated_at": now, **(fields or {})})
        for i, (name, value) in enumerate(encoded.items()):
            names[f"#f{i}"] = name
            values[f":f{i}"] = value
            sets.append(f"#f{i} = :f{i}")
        for i, (name, value) in enumerate(_encode_fields(if_absent or {}).items()):
            if name in encoded:
                raise ValueError(f"{name!r} is both set and set if absent")
            names[f"#a{i}"] = name
            values[f":a{i}"] = value
            sets.append(f"#a{i} = if_not_exists(#a{i}, :a{i})")
        if increment_attempts:
            sets.append("attempts = if_not_exists(attempts, :zero) + :one")
            values[":zero"], values[":one"] = n(0), n(1)
        placeholders = []
        for i, state in enumerate(allowed):
            values[f":from{i}"] = s(state.value)
            placeholders.append(f":from{i}")
        update = "SET " + ", ".join(sets)
        for i, name in enumerate(clear):
            names[f"#c{i}"] = name
            removes.append(f"#c{i}")
        if removes:
            update += " REMOVE " + ", ".join(removes)
        condition = f"attribute_exists(job_id) AND #status IN ({', '.join(placeholders)})"
        if unsent_only:
            condition += " AND attribute_not_exists(email_sent_at)"
        if user_id is not None:
            condition += " AND user_id = :user"
            values[":user"] = s(user_id)
        if home_region is not None:
            names["#home"] = "home_region"
            condition += " AND (attribute_not_exists(#home) OR #home = :home)"
            values[":home"] = s(home_region)
        if attempt is not None:
            condition += " AND attempts = :attempt"
            values[":attempt"] = n(attempt)
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"job_id": s(job_id)},
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW",
        }
        if return_current:
            # A refusal returns the record as it was: the caller's answer, without a read.
            request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            with dynamo_errors("transition_job"):
                response = await self._client.update_item(**request)
        except ConditionFailed as exc:
            if not return_current:
                raise
            raise JobRefused("transition_job", _refused_item(exc)) from exc
        return item_to_job(response["Attributes"])

    async def record_progress(
        self,
        job_id: str,
        *,
        attempt: int,
        rows_exported: int,
        total_rows: int | None,
        now: datetime,
    ) -> None:
        """Write a running job's progress and heartbeat (``heartbeat_at`` = ``now``).

        Only while the job is ``in_progress`` *and* still run by ``attempt`` (the record's
        ``attempts`` when that run started): a run that was cancelled or taken over by a
        newer attempt gets ``ConditionFailed`` and must stop.
        """
        sets = ["rows_exported = :rows", "heartbeat_at = :now", "updated_at = :now"]
        values: dict[str, Any] = {
            ":rows": n(rows_exported),
            ":now": s(format_ts(now)),
            ":running": s(JobState.IN_PROGRESS.value),
            ":attempt": n(attempt),
        }
        if total_rows is not None:
            sets.append("total_rows = :total")
            values[":total"] = n(total_rows)
        with dynamo_errors("record_progress"):
            await self._client.update_item(
                TableName=self._table,
                Key={"job_id": s(job_id)},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=(
                    "attribute_exists(job_id) AND #status = :running AND attempts = :attempt"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
            )

    async def requeue_failed(self, job_id: str, *, now: datetime) -> ExportJob:
        """Operator path out of a final state: ``failed`` back to ``queued``, clearing the
        previous run's outcome. Workers never call this; their transitions stay one-way.

        Raises ``ConditionFailed`` unless the job exists and is ``failed``.
        """
        with dynamo_errors("requeue_job"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"job_id": s(job_id)},
                # The earlier runs are history: none of them counts as a run lost to a dying
                # worker for the sweeper (``attempts - retries``), so retries := attempts.
                UpdateExpression=(
                    "SET #status = :queued, #active = :queued, updated_at = :now, "
                    "requeued_at = :now, "
                    "retries = if_not_exists(attempts, :zero) REMOVE "
                    + ", ".join(f for f in _RUN_OUTCOME_FIELDS if f != "retries")
                ),
                ConditionExpression="attribute_exists(job_id) AND #status = :failed",
                ExpressionAttributeNames={"#status": "status", "#active": ACTIVE_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":queued": s(JobState.QUEUED.value),
                    ":failed": s(JobState.FAILED.value),
                    ":now": s(format_ts(now)),
                    ":zero": n(0),
                },
                ReturnValues="ALL_NEW",
            )
        return item_to_job(response["Attributes"])

    async def active(
        self, status: JobState, *, created_before: datetime | None = None
    ) -> AsyncIterator[ExportJob]:
        """Jobs in ``status`` (queued or in_progress), oldest first, from the sparse active
        index: its size is the number of live jobs, not the size of the table."""
        if not status.is_active:
            raise ValueError(f"{status} is not an active state")
        condition = "#active = :status"
        values: dict[str, Any] = {":status": s(status.value)}
        if created_before is not None:
            condition += " AND created_at < :before"
            values[":before"] = s(format_ts(created_before))
        with dynamo_errors("active_jobs"):
            async for page in self._client.pages(
                "Query",
                TableName=self._table,
                IndexName=ACTIVE_INDEX,
                KeyConditionExpression=condition,
                ExpressionAttributeNames={"#active": ACTIVE_ATTRIBUTE},
                ExpressionAttributeValues=values,
            ):
                for item in page.get("Items", []):
                    yield item_to_job(item)

    async def mark_email_sent(
        self,
        job_id: str,
        *,
        status: JobState,
        now: datetime,
        fields: Mapping[str, Any] | None = None,
    ) -> ExportJob:
        """Record that the job's email went out, once: a re-run that finds ``email_sent_at``
        does not send again. ``fields`` (row count, size, file name) are stored with it so
        such a re-run can finish the record without producing the file again.

        Raises ``ConditionFailed`` unless the job is in ``status`` without ``email_sent_at``.
        """
        encoded = _encode_fields({"email_sent_at": now, "updated_at": now, **(fields or {})})
        names = {"#status": "status"}
        values: dict[str, Any] = {":status": s(status.value)}
        sets = []
        for i, (name, value) in enumerate(encoded.items()):
            names[f"#f{i}"] = name
            values[f":f{i}"] = value
            sets.append(f"#f{i} = :f{i}")
        with dynamo_errors("mark_email_sent"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"job_id": s(job_id)},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="#status = :status AND attribute_not_exists(email_sent_at)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return item_to_job(response["Attributes"])

    async def claim_stale(
        self, seen: ExportJob, *, now: datetime, rehome: str | None = None
    ) -> ExportJob:
        """Take over a job the sweeper found stale, if nothing touched it since ``seen``.

        Succeeds only while the record is exactly as read (same status, attempts and
        heartbeat), so a run that started or beat meanwhile keeps the job; the write sets
        ``heartbeat_at`` so the next sweep waits a full staleness period for the new run.
        With ``rehome`` (a takeover from a failed region), also only while the job's home is
        still the one read, and the job moves to ``rehome``. Raises ``ConditionFailed``
        otherwise.
        """
        values: dict[str, Any] = {
            ":now": s(format_ts(now)),
            ":status": s(seen.status.value),
            ":attempts": n(seen.attempts),
        }
        # A record never run may predate the attempts counter: absent counts as 0.
        condition = "#status = :status AND (attempts = :attempts" + (
            " OR attribute_not_exists(attempts))" if seen.attempts == 0 else ")"
        )
        if seen.heartbeat_at is None:
            condition += " AND attribute_not_exists(heartbeat_at)"
        else:
            condition += " AND heartbeat_at = :seen_heartbeat"
            values[":seen_heartbeat"] = s(format_ts(seen.heartbeat_at))
        update = "SET heartbeat_at = :now"
        if rehome is not None:
            update += ", home_region = :home"
            values[":home"] = s(rehome)
            if seen.home_region is None:
                condition += " AND attribute_not_exists(home_region)"
            else:
                condition += " AND home_region = :seen_home"
                values[":seen_home"] = s(seen.home_region)
        with dynamo_errors("claim_stale_job"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"job_id": s(seen.job_id)},
                # Not updated_at: for a queued job that is when it entered the queue, which
                # the sweeper's age limit counts from.
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return item_to_job(response["Attributes"])

    async def scan(self, *, status: JobState | None = None, limit: int) -> list[ExportJob]:
        """Up to ``limit`` jobs of any user, optionally in one state (operators only: this
        reads the whole table, page by page, until it has ``limit`` matches)."""
        query: dict[str, Any] = {"TableName": self._table}
        if status is not None:
            query["FilterExpression"] = "#status = :status"
            query["ExpressionAttributeNames"] = {"#status": "status"}
            query["ExpressionAttributeValues"] = {":status": s(status.value)}
        found: list[ExportJob] = []
        with dynamo_errors("scan_jobs"):
            async for page in self._client.pages("Scan", **query):
                found.extend(item_to_job(i) for i in page.get("Items", []))
                if len(found) >= limit:
                    break
        return found[:limit]

    async def files_to_delete(self, *, now: datetime, limit: int = 1000) -> list[ExportJob]:
        """Jobs holding a file that must go: succeeded ones past their file's expiry, and
        failed or cancelled ones that uploaded a file before they stopped.

        A scan, like ``delete_expired``: run by the hourly cron, not on a request path.
        """
        found: list[ExportJob] = []
        with dynamo_errors("scan_files"):
            async for page in self._client.pages(
                "Scan",
                TableName=self._table,
                FilterExpression=(
                    "attribute_exists(file_key) AND ((#status = :succeeded AND "
                    "file_expires_at <= :now) OR #status IN (:failed, :cancelled, :expired))"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":succeeded": s(JobState.SUCCEEDED.value),
                    ":failed": s(JobState.FAILED.value),
                    ":cancelled": s(JobState.CANCELLED.value),
                    ":expired": s(JobState.EXPIRED.value),
                    ":now": s(format_ts(now)),
                },
            ):
                found.extend(item_to_job(i) for i in page.get("Items", []))
                if len(found) >= limit:
                    break
        return found[:limit]

    async def forget_file(self, job_id: str, file_key: str, *, now: datetime) -> None:
        """Detach ``file_key`` from a failed, cancelled or expired job, before its object is
        deleted (an expired job holds one only when an earlier delete failed).

        Raises ``ConditionFailed`` if the job has moved on (an operator re-queued it, and a
        re-run may be writing the same key right now): then the object must stay.
        """
        with dynamo_errors("forget_file"):
            await self._client.update_item(
                TableName=self._table,
                Key={"job_id": s(job_id)},
                UpdateExpression="SET updated_at = :now REMOVE file_key",
                ConditionExpression=(
                    "file_key = :key AND #status IN (:failed, :cancelled, :expired)"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":key": s(file_key),
                    ":now": s(format_ts(now)),
                    ":failed": s(JobState.FAILED.value),
                    ":cancelled": s(JobState.CANCELLED.value),
                    ":expired": s(JobState.EXPIRED.value),
                },
            )

    async def reattach_file(
        self, job_id: str, file_key: str, *, status: JobState, now: datetime
    ) -> None:
        """Give a final job back the file whose delete failed, so the next expiry run finds
        it again. Raises ``ConditionFailed`` if the job moved on or holds a file already."""
        with dynamo_errors("reattach_file"):
            await self._client.update_item(
                TableName=self._table,
                Key={"job_id": s(job_id)},
                UpdateExpression="SET file_key = :key, updated_at = :now",
                ConditionExpression="attribute_not_exists(file_key) AND #status = :status",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":key": s(file_key),
                    ":now": s(format_ts(now)),
                    ":status": s(status.value),
                },
            )

    async def delete_expired(self, *, now: datetime, max_items: int = 10_000) -> int:
        """Delete job records whose retention has passed; returns how many.

        DynamoDB TTL does this in AWS within about two days; this sweep makes expiry exact
        for readers and covers endpoints without TTL. It scans, so its cost grows with the
        table; with TTL on, each run finds only the few records TTL has not reached yet.
        """
        deleted = 0
        cutoff = n(int(now.timestamp()))
        with dynamo_errors("expire_jobs"):
            async for page in self._client.pages(
                "Scan",
                TableName=self._table,
                FilterExpression="expires_at < :now",
                ExpressionAttributeValues={":now": cutoff},
                ProjectionExpression="job_id",
            ):
                for item in page.get("Items", []):
                    await self._client.delete_item(
                        TableName=self._table,
                        Key={"job_id": item["job_id"]},
                        ConditionExpression="expires_at < :now",
                        ExpressionAttributeValues={":now": cutoff},
                    )
                    deleted += 1
                    if deleted >= max_items:
                        return deleted
        return deleted

    async def record_download(self, job_id: str, *, now: datetime) -> ExportJob:
        """Count one use of the job's download link: an atomic ADD (concurrent downloads
        never lose a count) and ``last_downloaded_at``. Raises ``ConditionFailed`` if the
        record is gone; nothing else about the job changes."""
        with dynamo_errors("record_download"):
            response = await self._client.update_item(
                TableName=self._table,
                Key={"job_id": s(job_id)},
                UpdateExpression="ADD download_count :one SET last_downloaded_at = :now",
                ConditionExpression="attribute_exists(job_id)",
                ExpressionAttributeValues={":one": n(1), ":now": s(format_ts(now))},
                ReturnValues="ALL_NEW",
            )
        return item_to_job(response["Attributes"])


def _refused_item(exc: ConditionFailed) -> ExportJob | None:
    """The record a refused write returned with its error (``ALL_OLD``); None: no record."""
    cause = exc.__cause__
    item = cause.body.get("Item") if isinstance(cause, DynamoError) else None
    return item_to_job(item) if item else None


def _active_from(exc: DynamoError, *, check_index: int) -> ExportJob | None:
    """The active job a cancelled create transaction's ConditionCheck returned, if that
    check is what refused it."""
    if exc.code != "TransactionCanceledException":
        return None
    reasons = exc.body.get("CancellationReasons") or []
    if len(reasons) <= check_index:
        return None
    reason = reasons[check_index]
    item = reason.get("Item")
    if reason.get("Code") != "ConditionalCheckFailed" or not item:
        return None
    return item_to_job(item)


# Page cursors are the DynamoDB key of the last item, signed (HMAC-SHA256, bound to the user
# they were issued for), so a crafted cursor never reaches DynamoDB as an ExclusiveStartKey.
_CURSOR_VERSION = "1"
_CURSOR_MAC_BYTES = 16  # 128-bit tag: forgery is out of reach, the cursor stays short
_PROCESS_CURSOR_KEY = secrets.token_bytes(32)


def derive_cursor_key(secret: bytes) -> bytes:
    """The cursor-signing key derived from a service secret (the JWT signing key), so every
    API instance shares it and it never doubles as the secret it came from."""
    return hmac.new(secret, b"exporter/page-cursor/v1", hashlib.sha256).digest()


def _cursor_mac(key: bytes, user_id: str, payload: bytes) -> bytes:
    message = b"\x00".join((_CURSOR_VERSION.encode(), user_id.encode(), payload))
    return hmac.new(key, message, hashlib.sha256).digest()[:_CURSOR_MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_cursor(last: Mapping[str, Any], *, key: bytes | None = None) -> str:
    raw = json.dumps(last, separators=(",", ":"), sort_keys=True).encode()
    user_id = str(last["user_id"]["S"])
    mac = _cursor_mac(key or _PROCESS_CURSOR_KEY, user_id, raw)
    return f"{_CURSOR_VERSION}.{_b64(raw)}.{_b64(mac)}"


def _decode_cursor(cursor: str, user_id: str, *, key: bytes | None = None) -> dict[str, Any]:
    """Decode a page cursor, refusing anything we did not issue for this user."""
    invalid = InvalidCursor("The page cursor is not valid.")
    version, _, rest = cursor.partition(".")
    payload_b64, _, mac_b64 = rest.partition(".")
    if version != _CURSOR_VERSION or not payload_b64 or not mac_b64 or not cursor.isascii():
        raise invalid
    try:
        raw, mac = _unb64(payload_b64), _unb64(mac_b64)
    except (binascii.Error, ValueError):
        raise invalid from None
    if not hmac.compare_digest(mac, _cursor_mac(key or _PROCESS_CURSOR_KEY, user_id, raw)):
        raise invalid
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid from None
    # We signed it, so it has our shape; checked anyway, cheaply.
    shape_ok = (
        isinstance(decoded, dict)
        and set(decoded) == {"job_id", "user_id", "created_at"}
        and all(isinstance(v, dict) and set(v) == {"S"} for v in decoded.values())
        and all(isinstance(v["S"], str) for v in decoded.values())
    )
    if not shape_ok or decoded["user_id"]["S"] != user_id:
        raise invalid
    return dict(decoded)
