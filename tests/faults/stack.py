"""What the fault tests drive: the API and workers as real processes, a private Redis, an SMTP
sink that can refuse, throttle or reject, and ways to watch PostgreSQL and the job records."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
from aiosmtpd.controller import Controller

from exporter.config import Settings
from exporter.dev.ports import free_port, wait_for_port
from exporter.dev.smtp import OutboxHandler, read_outbox
from exporter.mail.messages import EXPORT_ID_HEADER

# Short everything: a dead run is noticed within seconds, retries wait fractions of a second.
FAST_WORKER = {
    "EXPORTER_WORKER__POLL_DELAY_S": "0.05",
    "EXPORTER_WORKER__MAX_JOBS": "4",
    "EXPORTER_WORKER__MAX_TRIES": "8",
    "EXPORTER_WORKER__JOB_TIMEOUT_S": "60",
    "EXPORTER_WORKER__SHUTDOWN_GRACE_S": "10",
    "EXPORTER_WORKER__RETRY_BASE_S": "0.2",
    "EXPORTER_WORKER__RETRY_CAP_S": "1",
    "EXPORTER_EXPORTS__PROGRESS_INTERVAL_S": "1",
    # The large test export (csv.gz) travels as an attachment, so the test reads it back
    # from the sink; S3 delivery has its own tests (tests/delivery/test_email.py).
    "EXPORTER_EXPORTS__ATTACHMENT_MAX_BYTES": str(40 * 1024 * 1024),
    "EXPORTER_WORKER__STALE_AFTER_S": "4",
    "EXPORTER_WORKER__SWEEP_EVERY_S": "2",
    "EXPORTER_WORKER__SWEEP_QUEUED_GRACE_S": "3",
    "EXPORTER_WORKER__LIVENESS_TTL_S": "3",
}
# What FAST_WORKER shortens about recovery and retries; without these the processes run at
# the shipped defaults (the delivery of large files as attachments stays, for the test).
_SHORTENED = [k for k in FAST_WORKER if k != "EXPORTER_EXPORTS__ATTACHMENT_MAX_BYTES"]


def at_shipped_defaults(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the recovery and retry clocks back at their shipped defaults."""
    return {k: v for k, v in env.items() if k not in _SHORTENED}


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one process that record ``event``."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                found.append(entry)
    return found


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes ``python -m exporter`` use these settings."""
    assert settings.jwt.private_key is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(
        {
            "EXPORTER_ENVIRONMENT": settings.environment.value,
            "EXPORTER_LOG_JSON": "true",
            "EXPORTER_POSTGRES__DSN": settings.postgres.dsn.get_secret_value(),
            "EXPORTER_POSTGRES__POOL_MAX_SIZE": "5",
            "EXPORTER_REDIS__URL": settings.redis.url.get_secret_value(),
            "EXPORTER_REDIS__QUEUE_NAME": settings.redis.queue_name,
            "EXPORTER_DYNAMO__ENDPOINT_URL": str(settings.dynamo.endpoint_url),
            "EXPORTER_DYNAMO__TABLE_PREFIX": settings.dynamo.table_prefix,
            "EXPORTER_S3__ENDPOINT_URL": str(settings.s3.endpoint_url),
            "EXPORTER_S3__BUCKET": settings.s3.bucket,
            "EXPORTER_SMTP__HOST": settings.smtp.host,
            "EXPORTER_SMTP__PORT": str(settings.smtp.port),
            "EXPORTER_SMTP__TIMEOUT_S": "5",
            "EXPORTER_JWT__PRIVATE_KEY": settings.jwt.private_key.get_secret_value(),
            "PYTHONUNBUFFERED": "1",
            # One pool: these tests kill and starve *the* worker running a 150,000-row
            # export, which routing would send to a large pool they do not start.
            "EXPORTER_EXPORTS__ROUTING_ENABLED": "false",
            # The schedules' cron reads the due index of the tables every test shares: a
            # process of one test would claim (and run, and wait out at SIGTERM) another
            # test's schedules. tests/schedules drive the scheduler themselves.
            "EXPORTER_SCHEDULES__SCHEDULER_ENABLED": "false",
            **FAST_WORKER,
        }
    )
    env.update(extra)
    return env


@dataclass
class Processes:
    """API and worker processes of one test; every one still running is killed at the end."""

    env: dict[str, str]
    logs: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_url: str = ""
    log_paths: dict[int, Path] = field(default_factory=dict)  # by pid

    def log_of(self, proc: subprocess.Popen[bytes]) -> Path:
        """Where ``proc`` writes its stdout and stderr."""
        return self.log_paths[proc.pid]

    def spawn(self, role: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        path = self.logs / f"{role}-{len(self.started)}.log"
        log = open(path, "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", role, *args],
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.started.append(proc)
        self.log_paths[proc.pid] = path
        return proc

    async def start_api(self) -> subprocess.Popen[bytes]:
        port = free_port()
        proc = self.spawn("api", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            await wait_until(lambda: _responds(http, f"{self.api_url}/healthz"), timeout_s=60)
        return proc

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("worker", **env)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _responds(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float, every_s: float = 0.1
) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


# --- SMTP: a sink whose behaviour the test changes while the worker sends --------------------


class FaultyHandler(OutboxHandler):
    """Stores accepted messages like the dev sink; can answer 454 or reject recipients."""

    def __init__(self, outbox: Path) -> None:
        super().__init__(outbox)
        self.throttle_next = 0  # this many DATA commands get "454 Throttling failure"
        self.reject_recipients = False
        self.rcpt_seen = 0
        self.data_seen = 0

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        self.rcpt_seen += 1
        if self.reject_recipients:
            return "550 5.1.1 <" + address + ">: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.data_seen += 1
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return "454 Throttling failure: Maximum sending rate exceeded."
        return await super().handle_DATA(server, session, envelope)


class FaultySmtp:
    """An SMTP sink on a fixed port that can be taken down (connections refused) and back."""

    def __init__(self, outbox: Path) -> None:
        self.port = free_port()
        self.outbox = outbox
        self.handler = FaultyHandler(outbox)
        self._controller: Controller | None = None

    def up(self) -> None:
        if self._controller is None:
            self._controller = Controller(
                self.handler, hostname="127.0.0.1", port=self.port, data_size_limit=None
            )
            self._controller.start()

    def down(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[EmailMessage]:
        return [m for _, m in read_outbox(self.outbox)]

    def for_export(self, export_id: str) -> list[EmailMessage]:
        return [m for m in self.messages() if m[EXPORT_ID_HEADER] == export_id]


# --- a private Redis that may be killed and wiped --------------------------------------------


class PrivateRedis:
    """``redis-server`` on a free port, without persistence: a restart starts empty.
    ``options`` (``"--maxmemory-policy", "allkeys-lru"``) come last and win."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout_s=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_hard(self.proc)
        self.proc = None
