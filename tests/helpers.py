"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import collections
import csv
import dataclasses
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from exporter.csvstream import neutralise_formula
from exporter.dev.ports import free_port
from exporter.exports.message import export_message
from exporter.jobs.run import ExportOutcome, run_export
from exporter.mail.smtp import Mailer
from exporter.metrics import DYNAMODB_WRITE_OPERATIONS, dynamodb_calls
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.resources import Resources


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class

    user_id: str
    email: str
    password: str


async def sign_in(client: TestClient[Any, Any], user: TestUser) -> dict[str, Any]:
    """The token pair for ``user``, from the real token endpoint."""
    response = await client.post(
        "/v1/auth/token", json={"email": user.email, "password": user.password}
    )
    assert response.status == 200, await response.text()
    pair: dict[str, Any] = await response.json()
    return pair


async def login(client: TestClient[Any, Any], user: TestUser) -> dict[str, str]:
    """Authorization headers for ``user``, obtained through the real token endpoint."""
    return {"Authorization": f"Bearer {(await sign_in(client, user))['access_token']}"}


# --- the CSV contract, written independently of the SQL that implements it ---------------

RAW_EXPORT_QUERY = (
    "SELECT m.guid, o.guid AS org_guid, o.name, m.plan, m.status, m.role, m.started_on,"
    " m.ends_on, m.auto_renew, m.price, m.currency, m.created_at, m.updated_at"
    " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
    " WHERE m.user_id = $1 ORDER BY m.id"
)


def reference_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with Z; fractional seconds only when present, without trailing zeros."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def reference_row(record: Any) -> list[str]:
    """One membership as the README promises it in the CSV."""

    def text(value: str) -> str:
        return neutralise_formula(value)

    return [
        str(record["guid"]),
        str(record["org_guid"]),
        text(record["name"]),
        text(record["plan"]),
        text(record["status"]),
        text(record["role"]),
        record["started_on"].isoformat(),
        record["ends_on"].isoformat() if record["ends_on"] else "",
        "true" if record["auto_renew"] else "false",
        str(record["price"]),
        record["currency"],
        reference_timestamp(record["created_at"]),
        reference_timestamp(record["updated_at"]),
    ]


def scraped(text: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample's value from a Prometheus text exposition, None when it is not there."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


# --- the export job, run directly as the worker runs it ------------------------------------


async def new_job(
    resources: Resources, user_id: str, *, age_s: float = 0, bom: bool = False
) -> ExportJob:
    """A queued export record for ``user_id``, requested ``age_s`` seconds ago."""
    job = ExportJob.new(
        user_id=user_id,
        fmt=ExportFormat.CSV,
        now=utcnow() - timedelta(seconds=age_s),
        retention_s=3600,
        bom=bom,
    )
    await resources.jobs.create(job)
    return job


async def deliver(
    resources: Resources, job: ExportJob | str, user_id: str | None = None, *, attempt: int = 1
) -> ExportOutcome | None:
    """One delivery of the job's queue message, as the worker would run it: the message the
    API sends for ``job`` (with the file name), or, given only an export id, a message of an
    older release (without it: the run reads the record first). ``user_id``: the message's,
    by default the job's owner."""
    if isinstance(job, ExportJob):
        message = export_message(job)
        if user_id is not None:
            message = dataclasses.replace(message, user_id=user_id)
    else:
        assert user_id is not None
        message = ExportMessageV1(job, user_id)
    return await run_export(resources, message.to_payload(), attempt=attempt, max_attempts=3)


def with_exports(resources: Resources, **changes: Any) -> Resources:
    """``resources`` with some export settings changed (e.g. a fast heartbeat)."""
    exports = resources.settings.exports.model_copy(update=changes)
    return dataclasses.replace(
        resources, settings=resources.settings.model_copy(update={"exports": exports})
    )


def without_smtp(resources: Resources) -> Resources:
    """``resources`` whose mailer points at a port nobody listens on (fails within 2 s)."""
    dead_smtp = resources.settings.smtp.model_copy(update={"port": free_port(), "timeout_s": 2})
    return dataclasses.replace(resources, mailer=Mailer(dead_smtp))


async def past_its_budget(resources: Resources, user_id: str) -> tuple[ExportJob, Resources]:
    """A queued export asked for an hour ago, and ``resources`` with a 10-minute retry budget
    and no mail service: its first transient failure is final."""
    job = ExportJob.new(
        user_id=user_id, fmt=ExportFormat.CSV, now=utcnow() - timedelta(hours=1), retention_s=7200
    )
    await resources.jobs.create(job)
    worker = resources.settings.worker.model_copy(update={"retry_budget_s": 600})
    spent = resources.settings.model_copy(update={"worker": worker})
    return job, dataclasses.replace(without_smtp(resources), settings=spent)


def attachment_rows(message: EmailMessage) -> list[list[str]]:
    """The rows of the one CSV attached to ``message``."""
    (part,) = list(message.iter_attachments())
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return list(csv.reader(io.StringIO(payload.decode("utf-8"), newline="")))


async def expected_rows(pg: asyncpg.Connection[Any], user_id: str) -> list[list[str]]:
    """The user's memberships straight from PostgreSQL, rendered the way the CSV promises."""
    return [reference_row(r) for r in await pg.fetch(RAW_EXPORT_QUERY, user_id)]


class DynamoCalls:
    """The DynamoDB calls this process made inside a ``with`` block, by operation, read from
    the real counter (``exporter_dynamodb_calls_total``) that the client's hook keeps."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._before: dict[str, int] = {}

    def __enter__(self) -> DynamoCalls:
        self._before = dynamodb_calls()
        return self

    def __exit__(self, *_: object) -> None:
        after = dynamodb_calls()
        self.calls = collections.Counter(
            {
                op: n - self._before.get(op, 0)
                for op, n in after.items()
                if n > self._before.get(op, 0)
            }
        )

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.calls.items() if op in DYNAMODB_WRITE_OPERATIONS)

    @property
    def reads(self) -> int:
        return self.total - self.writes


# Text that breaks naive exports: formula triggers (the first seven), separators, quotes,
# line breaks, non-ASCII. tests/store and tests/formats build their users from it.
HOSTILE_TEXT = [
    '=HYPERLINK("http://evil.example")',
    "+1",
    "-1+2",
    "@SUM(A1)",
    "\tTab",
    "\rCR",
    "\nLF",
    'Quote "me"',
    "Comma, Inc.",
    "multi\nline",
    "Zürich 東京 🚀",
    "plain",
]


async def until_status(
    resources: Resources, job_id: str, status: JobState, *, timeout_s: float = 30
) -> ExportJob:
    """The job once it reaches ``status`` (read every 50 ms), or an AssertionError."""
    for _ in range(int(timeout_s / 0.05)):
        job = await resources.jobs.get(job_id)
        if job is not None and job.status is status:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} not {status.value} within {timeout_s} s")
