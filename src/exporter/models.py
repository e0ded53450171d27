"""Domain types shared by the API, the stores and the worker. No I/O here."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from exporter.errors import ExportFailed
from exporter.selection import ALL, ExportSelection


class JobState(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        """No more work will happen for this job."""
        return self in TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        """Queued or running: counts as the user's one active export."""
        return self in ACTIVE_STATES


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
)
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.IN_PROGRESS})

# Which state may follow which. in_progress -> in_progress is a re-delivery after a worker
# died mid-run: the job starts again from the beginning. The outcome (succeeded, failed,
# cancelled) never changes; the one move after it is succeeded -> expired, when the
# delivered file's retention ends and the file is deleted.
ALLOWED_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.IN_PROGRESS, JobState.FAILED, JobState.CANCELLED}),
    JobState.IN_PROGRESS: frozenset(
        {JobState.IN_PROGRESS, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset({JobState.EXPIRED}),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.EXPIRED: frozenset(),
}


def sources_of(target: JobState) -> frozenset[JobState]:
    """The states from which ``target`` may be entered."""
    return frozenset(src for src, dsts in ALLOWED_TRANSITIONS.items() if target in dsts)


class ExportFormat(StrEnum):
    CSV = "csv"
    CSV_GZ = "csv.gz"
    JSONL = "jsonl"
    PARQUET = "parquet"
    XLSX = "xlsx"

    @property
    def content_type(self) -> tuple[str, str]:
        """(maintype, subtype) of the file."""
        return _CONTENT_TYPES[self]

    @property
    def is_csv(self) -> bool:
        """CSV text (plain or gzipped): the formats a byte order mark applies to."""
        return self in (ExportFormat.CSV, ExportFormat.CSV_GZ)


_CONTENT_TYPES: Mapping[ExportFormat, tuple[str, str]] = {
    ExportFormat.CSV: ("text", "csv"),
    ExportFormat.CSV_GZ: ("application", "gzip"),
    ExportFormat.JSONL: ("application", "jsonl"),
    ExportFormat.PARQUET: ("application", "vnd.apache.parquet"),
    ExportFormat.XLSX: ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ExportJob:
    """One export request and everything that happened to it."""

    job_id: str
    user_id: str
    status: JobState
    format: ExportFormat
    created_at: datetime
    expires_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    row_count: int | None = None
    byte_size: int | None = None
    file_name: str | None = None
    delivery: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    updated_at: datetime | None = None
    # Request option: start the CSV with a UTF-8 byte order mark (Excel on Windows).
    bom: bool = False
    # Progress while running, written at a bounded rate; the write doubles as the heartbeat.
    rows_exported: int | None = None
    total_rows: int | None = None
    heartbeat_at: datetime | None = None
    # Set, conditionally, once the email went out: a re-run never sends it twice.
    email_sent_at: datetime | None = None
    # Where the export's file is kept (object key, never a URL) and until when: every
    # produced file is stored, so it can be downloaded whether or not the email arrives.
    file_key: str | None = None
    file_expires_at: datetime | None = None
    # Uses of its download links (each one audited): counted atomically, never reset.
    download_count: int = 0
    last_downloaded_at: datetime | None = None
    # The manifest's checksum: SHA-256 of the file, computed while it was written.
    sha256: str | None = None
    # Set once the whole file is stored (with row_count, byte_size, file_name, sha256): a
    # re-run after a failed delivery sends that file instead of running its COPY again.
    file_stored_at: datetime | None = None
    # A run that hit a transient failure waits for its next try, within the retry budget:
    # when (``next_attempt_at``), why in plain words (``last_error``), and how many runs
    # ended that way (``retries``; so runs lost to dead workers are ``attempts - retries``).
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    retries: int = 0
    # When an operator last put this failed export back on the queue: its retry budget
    # counts from here, not from the original request.
    requeued_at: datetime | None = None
    # A failed export's notice could not be sent yet (the mail service is down): its next
    # try, within the retry budget counted from the failure.
    notice_next_attempt_at: datetime | None = None
    # The channel refused the file for good (e.g. the mail server rejected the address):
    # the export still succeeded (the file is stored and downloadable), and this says why
    # it did not arrive.
    delivery_error_code: str | None = None
    delivery_error_message: str | None = None
    # The worker process running the current attempt (``jobs/worker.py``): when its
    # liveness key in Redis is gone, the recovery sweeper knows the run died with it.
    worker_id: str | None = None
    # Size-aware routing: the user's rows counted at create (None: the count failed, or
    # routing is off) and whether the export went to the large queue. The sweeper and an
    # operator's retry put it back on the queue it was routed to.
    estimated_rows: int | None = None
    large: bool = False
    # Two regions (regions.py): the region that owns the job (where it was created, or the
    # region that took it over from a failed one), and the region whose bucket holds its
    # file. None in a one-region deployment.
    home_region: str | None = None
    file_region: str | None = None
    # The monthly schedule that made this export (``exporter.schedules``); None when the
    # user asked for it. The email then says it is the monthly export and how to stop it.
    schedule_id: str | None = None
    # Request options (issue 17): which columns, which rows, which time zone. A record
    # from before them has none: every column, every row, UTC.
    selection: ExportSelection = ALL

    @property
    def delivered_at(self) -> datetime | None:
        """When the file (or, for a failed export, its failure notice) reached the owner:
        the once-only guard of a delivery. Stored as ``email_sent_at``, its name from when
        email was the only channel."""
        return self.email_sent_at

    @property
    def progress(self) -> float | None:
        """0..1 while the total is known; 1 once succeeded."""
        if self.status is JobState.SUCCEEDED:
            return 1.0
        if self.total_rows is None or self.rows_exported is None:
            return None
        if self.total_rows == 0:
            return 0.0
        return min(1.0, self.rows_exported / self.total_rows)

    @classmethod
    def new(
        cls,
        *,
        user_id: str,
        fmt: ExportFormat,
        now: datetime,
        retention_s: int,
        bom: bool = False,
        estimated_rows: int | None = None,
        large: bool = False,
        schedule_id: str | None = None,
        selection: ExportSelection = ALL,
    ) -> ExportJob:
        return cls(
            job_id=str(uuid.uuid4()),
            user_id=user_id,
            status=JobState.QUEUED,
            format=fmt,
            bom=bom,
            estimated_rows=estimated_rows,
            large=large,
            schedule_id=schedule_id,
            selection=selection,
            created_at=now,
            updated_at=now,
            expires_at=datetime.fromtimestamp(int(now.timestamp()) + retention_s, UTC),
        )

    def replace(self, **changes: Any) -> ExportJob:
        return dataclasses.replace(self, **changes)


MESSAGE_VERSION = 1
# Request ids travel with the message only for logs; anything longer or unprintable is dropped.
MAX_REQUEST_ID = 128


def clean_request_id(value: object) -> str | None:
    """``value`` if it is a request id safe to put in a log line, else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID and value.isprintable():
        return value
    return None


# The export's file name rides in the message and becomes the last part of an S3 key
# (``exports/{export_id}/{file name}``): only what ``jobs/produce.py export_file_name`` makes
# (letters, digits, ``.``, ``_``, ``+``, ``-``; a letter or digit first, so never ``.`` or
# ``..``), and at most as long as a file system allows a name to be.
MAX_FILE_NAME = 255
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def is_plain_file_name(value: str) -> bool:
    """Whether ``value`` is a file name safe to use as the last part of an object key."""
    return len(value) <= MAX_FILE_NAME and _FILE_NAME.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class ExportMessageV1:
    """The queue payload. Versioned so old and new workers can coexist during a deploy.

    ``request_id`` (optional, added within version 1) is the API request that created the
    export, so its logs can be followed into the worker. Workers that predate it ignore it;
    messages without it parse as before.

    ``file_name`` (optional, added within version 1 the same way) is the name of the file
    the export produces (``jobs/produce.py export_file_name``): with it the worker starts
    the run, recording where the file will be stored, without reading the record first
    (docs/reliability.md). A message without it (queued by an older release) is run as
    before: read, then start. Unlike the request id it is checked strictly, since it becomes
    part of an S3 key: anything but a plain file name fails the message (``bad_message``).
    """

    export_id: str
    user_id: str
    v: int = field(default=MESSAGE_VERSION)
    request_id: str | None = None
    file_name: str | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": self.v,
            "export_id": self.export_id,
            "user_id": self.user_id,
        }
        if self.request_id is not None:
            payload["request_id"] = self.request_id
        if self.file_name is not None:
            payload["file_name"] = self.file_name
        return payload

    @classmethod
    def from_payload(cls, payload: object) -> ExportMessageV1:
        """Parse a queue payload, refusing versions and shapes this worker does not know."""
        if not isinstance(payload, Mapping):
            raise ExportFailed("bad_message", "queue payload is not an object")
        version = payload.get("v")
        # type() check: True == 1 and 1.0 == 1 in Python, and neither is version 1.
        if type(version) is not int or version != MESSAGE_VERSION:
            raise ExportFailed(
                "unsupported_message_version", f"unknown payload version {version!r}"
            )
        export_id, user_id = payload.get("export_id"), payload.get("user_id")
        if not isinstance(export_id, str) or not isinstance(user_id, str) or not user_id:
            raise ExportFailed("bad_message", "export_id and user_id must be non-empty strings")
        try:
            canonical = str(uuid.UUID(export_id))
        except ValueError:
            raise ExportFailed("bad_message", "export_id is not a UUID") from None
        if canonical != export_id:
            # Job ids are stored canonical; any other spelling would miss the record.
            raise ExportFailed("bad_message", "export_id is not a canonical UUID")
        # Only a log aid: a bad one is dropped, never a reason to fail the export.
        request_id = clean_request_id(payload.get("request_id"))
        file_name = payload.get("file_name")
        if file_name is not None and not (
            isinstance(file_name, str) and is_plain_file_name(file_name)
        ):
            raise ExportFailed("bad_message", "file_name is not a plain file name")
        return cls(export_id=export_id, user_id=user_id, request_id=request_id, file_name=file_name)


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    email: str
    password_hash: str
    active: bool
    scopes: tuple[str, ...]
    created_at: datetime
    display_name: str | None = None
