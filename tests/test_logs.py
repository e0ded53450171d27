"""One export followed through the JSON logs: request id from the API request to the email;
JSON off a terminal, readable lines on one."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from exporter.config import Environment, Settings
from exporter.dev.smtp import SmtpSink
from exporter.logs import configure_logging, renders_json
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


# --- the renderer: JSON for machines, readable lines for a person at a terminal -------------


@pytest.fixture(name="terminal")
def _fix_terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (the side a terminal emulator reads, the side a program writes)."""
    reader, writer = pty.openpty()
    yield reader, writer
    for fd in (reader, writer):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_the_renderer_follows_whether_stderr_is_a_terminal(terminal: tuple[int, int]) -> None:
    auto = Settings(environment=Environment.TEST, log_json=None)
    with os.fdopen(os.dup(terminal[1]), "w") as tty:
        assert renders_json(auto, tty) is False
        # EXPORTER_LOG_JSON wins over the guess, either way.
        assert renders_json(auto.model_copy(update={"log_json": True}), tty) is True
    assert renders_json(auto, io.StringIO()) is True
    assert renders_json(auto.model_copy(update={"log_json": False}), io.StringIO()) is False


# A process of its own, with the service's logging set up from the environment as in production.
_LOG_ONE_LINE = """
from exporter.config import Settings
from exporter.logs import configure_logging, get_logger
configure_logging(Settings())
get_logger("exporter.test").info("export.succeeded", rows=42)
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    return {**env, "EXPORTER_ENVIRONMENT": "test"}


def test_a_process_on_a_terminal_logs_readable_lines(terminal: tuple[int, int]) -> None:
    reader, writer = terminal
    subprocess.run(
        [sys.executable, "-c", _LOG_ONE_LINE],
        stderr=writer,
        env=_child_env(),
        check=True,
        timeout=60,
    )
    os.close(writer)
    out = b""
    with contextlib.suppress(OSError):  # EIO once the written side is closed and drained
        while chunk := os.read(reader, 4096):
            out += chunk
    line = _ANSI.sub("", out.decode()).strip()
    assert "export.succeeded" in line and "rows=42" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_a_process_writing_to_a_pipe_logs_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOG_ONE_LINE],
        capture_output=True,
        env=_child_env(),
        check=True,
        timeout=60,
    )
    (line,) = done.stderr.decode().splitlines()
    event = json.loads(line)
    assert event["event"] == "export.succeeded" and event["rows"] == 42
    assert event["level"] == "info" and event["logger"] == "exporter.test"
