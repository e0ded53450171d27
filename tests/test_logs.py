"""One export followed through the JSON logs: request id from the API request to the email."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from exporter.config import Settings
from exporter.dev.smtp import SmtpSink
from exporter.logs import configure_logging
from tests.conftest import MakeUser, RunWorker, SeedRows
from tests.helpers import login

LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture(name="json_logs")
def _fix_json_logs(settings: Settings) -> Iterator[LogLines]:
    """The service's real logging set-up (JSON lines), writing into a buffer for the test."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(settings.model_copy(update={"log_json": True}))
    # Loggers must not keep this configuration past the test.
    structlog.configure(cache_logger_on_first_use=False)
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]

    try:
        yield lines
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


async def test_one_request_id_follows_an_export_from_request_to_email(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    seed_rows: SeedRows,
    run_worker: RunWorker,
    smtp_sink: SmtpSink,
    json_logs: LogLines,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 25)
    headers = await login(client, user)
    request_id = f"trace-{uuid.uuid4().hex}"

    created = await client.post(
        "/v1/exports", json={}, headers={**headers, "X-Request-ID": request_id}
    )
    assert created.status == 202
    assert created.headers["X-Request-ID"] == request_id
    export_id = (await created.json())["id"]
    structlog.contextvars.clear_contextvars()  # the worker starts with nothing inherited

    worker = await run_worker()
    assert worker.jobs_complete == 1

    traced = [line for line in json_logs() if line.get("request_id") == request_id]
    events = {line["event"]: line for line in traced}
    # API side: the request summary and the creation, with the caller's id.
    assert events["http.request"]["route"] == "/v1/exports"
    assert events["export.created"]["export_id"] == export_id
    # Worker side: the job's summary line carries the same request id, the export and user.
    done = events["export.succeeded"]
    assert done["export_id"] == export_id
    assert done["user_id"] == user.user_id
    assert done["job_id"] == export_id
    assert done["rows"] == 25
    assert done["logger"] == "exporter.jobs.export"
    # ... and the email it describes was delivered.
    assert smtp_sink.for_export(export_id)


async def test_a_generated_request_id_is_returned_and_carried_to_the_worker(
    client: TestClient[Any, Any],
    make_user: MakeUser,
    run_worker: RunWorker,
    json_logs: LogLines,
) -> None:
    user = await make_user()
    headers = await login(client, user)
    too_long = "x" * 500  # not taken from the caller: replaced by one of ours
    created = await client.post(
        "/v1/exports", json={}, headers={**headers, "X-Request-ID": too_long}
    )
    request_id = created.headers["X-Request-ID"]
    assert request_id != too_long and len(request_id) == 32
    export_id = (await created.json())["id"]
    structlog.contextvars.clear_contextvars()

    await run_worker()

    worker_lines = [
        line
        for line in json_logs()
        if line.get("export_id") == export_id and line["logger"].startswith("exporter.jobs")
    ]
    assert worker_lines
    assert all(line["request_id"] == request_id for line in worker_lines)
