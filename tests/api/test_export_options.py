"""Export options through the API and a real worker: format, columns, row filters and time
zone end to end, and a precise 422 naming the field for every bad option."""

from __future__ import annotations

import io
import json
from datetime import date
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import openpyxl
import pyarrow.parquet as pq
import pytest
from aiohttp.test_utils import TestClient

from exporter.dev.smtp import SmtpSink
from exporter.models import utcnow
from exporter.selection import ExportSelection
from tests.api.test_exports import assert_problem
from tests.conftest import MakeUser, RunWorker
from tests.formats.conftest import reference
from tests.helpers import login

PROBLEM = "application/problem+json"
# Two of the five statuses, a plan (the seed's "pro" rows are all "trialing"), a start
# range that leaves the rows from 2020-08 on out: some rows in, most rows out.
FILTERED = {
    "columns": ["membership_id", "plan", "status", "started_on", "price", "updated_at"],
    "status": ["active", "trialing"],
    "plan": "pro",
    "started_between": {"from": "2020-01-01", "to": "2020-08-31"},
    "updated_since": "2020-01-01",
    "time_zone": "Europe/Paris",
}


def _selection(body: dict[str, Any]) -> ExportSelection:
    between = body["started_between"]
    return ExportSelection(
        columns=tuple(body["columns"]),
        statuses=tuple(body["status"]),
        plan=body["plan"],
        started_from=date.fromisoformat(between["from"]),
        started_to=date.fromisoformat(between["to"]),
        updated_since=date.fromisoformat(body["updated_since"]),
        time_zone=body["time_zone"],
    )


def _file_rows(fmt: str, data: bytes) -> list[dict[str, Any]]:
    """The file's rows as dicts of comparable values, read by the format's own reader."""
    if fmt == "jsonl":
        return [json.loads(line, parse_float=Decimal) for line in data.decode().splitlines()]
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    sheet = openpyxl.load_workbook(io.BytesIO(data)).worksheets[0]
    header, *rows = list(sheet.iter_rows(values_only=True))
    return [dict(zip(header, row, strict=True)) for row in rows]  # type: ignore[arg-type]


def _comparable(fmt: str, row: dict[str, Any]) -> dict[str, Any]:
    """A PostgreSQL row as the format carries it (Paris time; see README)."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name == "membership_id":
            value = str(value)
        elif name == "updated_at" and fmt == "xlsx":
            value = value.astimezone(_paris()).replace(tzinfo=None).replace(microsecond=0)
        elif name == "updated_at" and fmt == "jsonl":
            value = value.astimezone(_paris()).isoformat()
        elif name == "started_on" and fmt in ("jsonl", "xlsx"):
            value = value.isoformat()
        elif name == "price" and fmt == "xlsx":
            value = float(value)
        out[name] = value
    return out


def _paris() -> ZoneInfo:
    return ZoneInfo("Europe/Paris")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "xlsx"])
async def test_format_columns_and_filters_reach_the_file_manifest_name_and_email(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    seed_rows: Any,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    pg: asyncpg.Connection[Any],
    fmt: str,
) -> None:
    owner = await make_user()
    await seed_rows(owner.user_id, 400)
    headers = await login(client, owner)

    created = await client.post("/v1/exports", json={"format": fmt, **FILTERED}, headers=headers)
    assert created.status == 202, await created.text()
    export_id = (await created.json())["id"]
    worker = await run_worker()
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0

    job = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert job["status"] == "succeeded" and job["format"] == fmt
    expected = await reference(pg, owner.user_id, _selection(FILTERED))
    assert 0 < job["row_count"] == len(expected) < 400 / 5
    manifest = job["manifest"]
    assert manifest["columns"] == FILTERED["columns"]
    assert manifest["time_zone"] == "Europe/Paris"
    assert manifest["filters"] == {
        k: FILTERED[k] for k in FILTERED if k not in ("columns", "time_zone")
    }
    name = (
        f"memberships-{utcnow():%Y-%m-%d}_status-active+trialing_plan-pro"
        f"_started-20200101-20200831_updated-since-20200101_6-columns_Europe_Paris.{fmt}"
    )
    assert job["file_name"] == manifest["file_name"] == name

    (message,) = smtp_sink.for_export(export_id)
    (part,) = list(message.iter_attachments())
    assert part.get_filename() == name
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Columns:" in text and "membership_id, plan, status" in text
    assert "status active or trialing; plan pro; started 2020-01-01 to 2020-08-31" in text
    assert "Europe/Paris" in text
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    rows = _file_rows(fmt, data)
    if fmt == "xlsx":
        for row in rows:
            row["started_on"] = row["started_on"].date().isoformat()
    assert rows == [_comparable(fmt, r) for r in expected]


async def test_an_old_style_request_still_gets_every_column_in_utc(
    client: TestClient[Any, Any], make_user: MakeUser, run_worker: RunWorker, seed_rows: Any
) -> None:
    owner = await make_user()
    await seed_rows(owner.user_id, 3)
    headers = await login(client, owner)
    created = await client.post("/v1/exports", json={"format": "csv"}, headers=headers)
    export_id = (await created.json())["id"]
    await run_worker()
    job = await (await client.get(f"/v1/exports/{export_id}", headers=headers)).json()
    assert job["manifest"]["time_zone"] == "UTC" and job["manifest"]["filters"] == {}
    assert len(job["manifest"]["columns"]) == 13
    assert job["file_name"] == f"memberships-{utcnow():%Y-%m-%d}.csv"


HOSTILE_VALUE = "=cmd|' /C calc'!A0<script>"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"columns": ["membership_id", HOSTILE_VALUE]}, "columns.1"),
        ({"columns": ["plan", "plan"]}, "columns"),
        ({"columns": []}, "columns"),
        ({"columns": "plan"}, "columns"),
        ({"status": [HOSTILE_VALUE]}, "status.0"),
        ({"status": ["active", "active"]}, "status"),
        ({"status": []}, "status"),
        ({"plan": HOSTILE_VALUE}, "plan"),
        ({"started_between": {"from": "2026-02-30", "to": "2026-03-01"}}, "started_between.from"),
        ({"started_between": {"from": "2026-03-02", "to": "2026-03-01"}}, "started_between.from"),
        ({"started_between": {"from": "2026-03-01"}}, "started_between.to"),
        (
            {"started_between": {"from": "2026-03-01", "to": "2026-03-02", "x": 1}},
            "started_between.x",
        ),
        ({"updated_since": HOSTILE_VALUE}, "updated_since"),
        ({"updated_since": "2026-01-01T00:00:00Z"}, "updated_since"),
        ({"time_zone": HOSTILE_VALUE}, "time_zone"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"time_zone": "+01:00"}, "time_zone"),
        ({"format": "xlsx", "bom": True}, "bom"),
        ({"format": "parquet", "bom": True}, "bom"),
        ({"format": "jsonl", "filters": {}}, "filters"),
    ],
)
async def test_bad_options_get_a_422_naming_the_field_and_echoing_nothing(
    client: TestClient[Any, Any], make_user: MakeUser, body: dict[str, Any], field: str
) -> None:
    headers = await login(client, await make_user())

    response = await client.post("/v1/exports", json=body, headers=headers)

    problem = await assert_problem(response, 422, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == [field], problem
    text = await response.text()
    assert "calc" not in text and "script" not in text and "Olympus" not in text
    listing = await (await client.get("/v1/exports", headers=headers)).json()
    assert listing["items"] == []


async def test_bom_is_still_allowed_with_gzipped_csv(
    client: TestClient[Any, Any], make_user: MakeUser
) -> None:
    headers = await login(client, await make_user())
    response = await client.post(
        "/v1/exports", json={"format": "csv.gz", "bom": True}, headers=headers
    )
    assert response.status == 202
