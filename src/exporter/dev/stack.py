"""The whole service on one machine: `make run` (interactive) and `make demo` (one export).

Starts DynamoDB Local and the SMTP sink on loopback, prepares PostgreSQL (database,
migrations) and DynamoDB (tables), seeds the demo user, then runs the API and one worker
as child processes with the same settings, and stops everything it started on exit.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from exporter.auth import SigningKey
from exporter.aws import open_dynamo, open_s3
from exporter.config import Settings
from exporter.dev.demo import DEMO_EMAIL, seed_demo
from exporter.dev.dynamodb import start_dynamodb
from exporter.dev.ports import free_port, port_open
from exporter.dev.s3 import start_s3
from exporter.dev.smtp import read_outbox, start_smtp_sink
from exporter.mail.messages import EXPORT_ID_HEADER
from exporter.queue import open_arq_redis
from exporter.store.files import ExportFiles
from exporter.store.migrations import migrate
from exporter.store.tables import create_tables

VAR = Path("var")


@dataclass
class LocalStack:
    settings: Settings
    env: dict[str, str]
    api_url: str
    outbox: Path
    email: str
    password: str
    user_id: str
    rows: int
    processes: list[subprocess.Popen[bytes]]


async def ensure_database(dsn: str) -> None:
    """Create the configured database if the server lacks it (local convenience)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    else:
        await conn.close()


async def _check_redis(settings: Settings) -> None:
    """Fail early and plainly when Redis is down (the children would only log it)."""
    redis = await open_arq_redis(settings.redis)
    await redis.aclose()


_METRICS_PORT = "EXPORTER_WORKER__METRICS_PORT"


def _port_from(url: str | None, default: int) -> int:
    port = urlsplit(url).port if url else None
    return port or default


def _pick(port: int) -> int:
    return port if not port_open(port) else free_port()


def _env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "EXPORTER_DYNAMO__ENDPOINT_URL": str(settings.dynamo.endpoint_url),
            "EXPORTER_S3__ENDPOINT_URL": str(settings.s3.endpoint_url),
            "EXPORTER_SMTP__HOST": settings.smtp.host,
            "EXPORTER_SMTP__PORT": str(settings.smtp.port),
            "EXPORTER_API__HOST": settings.api.host,
            "EXPORTER_API__PORT": str(settings.api.port),
            "EXPORTER_API__PUBLIC_URL": settings.api.public_url,
            _METRICS_PORT: str(settings.worker.metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.jwt.private_key is None and "EXPORTER_JWT__PRIVATE_KEY" not in env:
        # One key for the API and the worker, so a download link the worker puts in an
        # email verifies at the API (each would otherwise make its own).
        env["EXPORTER_JWT__PRIVATE_KEY"] = SigningKey.generate().private_pem()
    return env


@contextmanager
def local_stack(
    settings: Settings, *, memberships: int, api_port: int | None = None, quiet: bool = False
) -> Iterator[LocalStack]:
    """Everything running; on exit, everything stopped (children first)."""
    with ExitStack() as stack:
        asyncio.run(_check_redis(settings))
        VAR.mkdir(exist_ok=True)
        dynamo = start_dynamodb(
            _pick(_port_from(settings.dynamo.endpoint_url, 8000)),
            log_path=VAR / "dynamodb.log",
        )
        stack.callback(dynamo.stop)
        s3 = start_s3(_pick(_port_from(settings.s3.endpoint_url, 9000)), log_path=VAR / "s3.log")
        stack.callback(s3.stop)
        outbox = (VAR / "outbox").resolve()
        sink = start_smtp_sink(outbox, _pick(settings.smtp.port))
        stack.callback(sink.stop)
        port = api_port or settings.api.port
        if port_open(port):
            raise RuntimeError(f"port {port} is in use; set EXPORTER_API__PORT to another")
        settings = settings.model_copy(
            update={
                "dynamo": settings.dynamo.model_copy(update={"endpoint_url": dynamo.endpoint_url}),
                "smtp": settings.smtp.model_copy(update={"host": sink.host, "port": sink.port}),
                "s3": settings.s3.model_copy(update={"endpoint_url": s3.endpoint_url}),
                "api": settings.api.model_copy(
                    update={"port": port, "public_url": f"http://127.0.0.1:{port}"}
                ),
                # The worker's metrics too, so `make run` shows every endpoint of the issue.
                "worker": settings.worker.model_copy(
                    update={"metrics_port": settings.worker.metrics_port or _pick(9100)}
                ),
            }
        )
        dsn = settings.postgres.dsn.get_secret_value()
        asyncio.run(ensure_database(dsn))
        migrate(dsn)

        async def prepare() -> None:
            async with open_dynamo(settings.dynamo) as client:
                await create_tables(client, settings.dynamo)
            async with open_s3(settings.s3) as client:
                await ExportFiles(client, settings.s3).ensure_bucket()

        asyncio.run(prepare())
        password = secrets.token_urlsafe(12)
        user_id, rows = asyncio.run(
            seed_demo(settings, email=DEMO_EMAIL, password=password, memberships=memberships)
        )
        env = _env_for(settings)
        processes = []
        # The large exports' pool too (size-aware routing), without a metrics port of its
        # own: the default worker's already serves the queue gauges.
        roles = (
            ("api", ["api"], env),
            ("worker", ["worker"], env),
            ("worker-large", ["worker", "--queue", "large"], {**env, _METRICS_PORT: "0"}),
        )
        for role, args, role_env in roles:
            # Quiet runs keep each child's log in var/<role>.log for a look afterwards.
            out = stack.enter_context(open(VAR / f"{role}.log", "wb")) if quiet else None
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "exporter", *args], env=role_env, stdout=out, stderr=out
            )
            processes.append(proc)
            stack.callback(_stop, proc)
        api_url = settings.api.public_url
        _wait_ready(api_url, processes)
        yield LocalStack(
            settings, env, api_url, outbox, DEMO_EMAIL, password, user_id, rows, processes
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(api_url: str, processes: list[subprocess.Popen[bytes]]) -> None:
    async def poll() -> None:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError(
                        "the API or the worker exited during start-up (see var/*.log)"
                    )
                try:
                    async with http.get(f"{api_url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError("the API did not become ready within 60 s")

    asyncio.run(poll())


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the stack cleanly (children included), even when the
    shell started us with SIGINT ignored (a background job)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def run_interactive(settings: Settings, *, memberships: int) -> int:
    _stop_on_signals()
    with local_stack(settings, memberships=memberships) as s:
        print(
            f"""
exporter is running.
  Open in a browser: {s.api_url}/  (sign in as the demo user below, ask for an export, download it)
  Swagger UI:  {s.api_url}/api/docs
  Metrics:     {s.api_url}/metrics  (worker: http://127.0.0.1:{s.settings.worker.metrics_port}/metrics)
  Demo user:   {s.email}  password: {s.password}  ({s.rows} memberships)
  Emails land in {s.outbox}/

Try it:
  TOKEN=$(curl -s -X POST {s.api_url}/v1/auth/token -H 'Content-Type: application/json' \\
      -d '{{"email": "{s.email}", "password": "{s.password}"}}' \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -X POST {s.api_url}/v1/exports -H "Authorization: Bearer $TOKEN" \\
      -H 'Content-Type: application/json' -d '{{"format": "csv"}}'
  curl -s {s.api_url}/v1/exports -H "Authorization: Bearer $TOKEN"

Press Ctrl-C to stop everything.""",
            flush=True,
        )
        try:
            while all(p.poll() is None for p in s.processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
            return 0
        print("a child process exited; stopping everything", file=sys.stderr)
        return 1


def run_demo(settings: Settings, *, memberships: int) -> int:
    """One export end to end; the last line printed is a JSON summary. 0 only on success."""
    with local_stack(settings, memberships=memberships, api_port=free_port(), quiet=True) as s:
        summary = asyncio.run(_demo_flow(s))
    print(json.dumps(summary))
    return 0 if summary["status"] == "succeeded" and summary.get("verified") else 1


async def _demo_flow(s: LocalStack) -> dict[str, Any]:
    async with aiohttp.ClientSession(base_url=s.api_url) as http:
        async with http.post(
            "/v1/auth/token", json={"email": s.email, "password": s.password}
        ) as r:
            r.raise_for_status()
            token = (await r.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        asked = time.monotonic()
        async with http.post("/v1/exports", json={"format": "csv"}, headers=headers) as r:
            r.raise_for_status()
            export_id = (await r.json())["id"]
        deadline = time.monotonic() + 120
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            async with http.get(f"/v1/exports/{export_id}", headers=headers) as r:
                job = await r.json()
            if job.get("status") in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.2)
        finished = time.monotonic()
        summary: dict[str, Any] = {
            "export_id": export_id,
            "status": job.get("status"),
            "rows": job.get("row_count"),
            "delivery": job.get("delivery"),
            "email_file": None,
        }
        if job.get("status") != "succeeded":
            summary["error"] = job.get("error")
            return summary
        found = find_export_email(s.outbox, export_id)
        if found is None:
            summary["error"] = "no email found for this export"
            return summary
        path, message = found
        summary["email_file"] = str(path)
        if any(True for _ in message.iter_attachments()):
            data = attached_csv(message)
        else:
            # A file too large to attach: open the email's link as a person would, with no
            # token (it redirects to the stored file).
            link = download_link(message)
            async with aiohttp.ClientSession() as browser, browser.get(link) as r:
                r.raise_for_status()
                data = await r.read()
        downloaded = time.monotonic()
        manifest = job.get("manifest") or {}
        summary["sha256_verified"] = hashlib.sha256(data).hexdigest() == manifest.get("sha256")
        summary["seconds"] = {
            "request_to_succeeded": round(finished - asked, 2),
            "request_to_file_in_hand": round(downloaded - asked, 2),
        }
    ids = [row["membership_id"] for row in csv.DictReader(io.StringIO(data.decode(), newline=""))]
    conn = await asyncpg.connect(s.settings.postgres.dsn.get_secret_value())
    try:
        expected = [
            str(r["guid"])
            for r in await conn.fetch(
                "SELECT guid FROM memberships WHERE user_id = $1 ORDER BY id", s.user_id
            )
        ]
    finally:
        await conn.close()
    summary["verified"] = (
        ids == expected and len(ids) == s.rows and bool(summary.get("sha256_verified"))
    )
    return summary


def find_export_email(outbox: Path, export_id: str) -> tuple[Path, EmailMessage] | None:
    for path, message in read_outbox(outbox):
        if message[EXPORT_ID_HEADER] == export_id:
            return path, message
    return None


def attached_csv(message: EmailMessage) -> bytes:
    """The CSV file attached to an export email."""
    for part in message.iter_attachments():
        if part.get_content_type() == "text/csv":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    raise LookupError("the message has no CSV attachment")


_LINK = re.compile(r"https?://\S+/v1/downloads/[A-Za-z0-9_.\-]+")


def download_link(message: EmailMessage) -> str:
    """The one-click download link in an export email's text."""
    body = message.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    found = _LINK.search(body.get_content())
    if found is None:
        raise LookupError("the message has no download link")
    return found.group(0)
