"""Schemathesis against the live OpenAPI document of a real API process (``exporter api`` on
a free loopback port, on this run's DynamoDB Local, PostgreSQL and Redis), with a valid
token: no 5xx, and every response matches what the document promises.

Bounded: a fixed number of examples per operation and a time budget, well under two
minutes on two cores. `make fuzz` runs this file alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from exporter.auth import Scope, SigningKey, TokenService
from exporter.config import Settings
from exporter.dev.ports import free_port
from exporter.models import utcnow
from tests.conftest import MakeUser

BIN = Path(sys.executable).parent
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Per operation; with the time budget below this keeps the run to about a minute.
MAX_EXAMPLES = 30
MAX_TIME_S = 45


def api_environment(settings: Settings) -> dict[str, str]:
    """The process environment an operator would set (secrets included, as in a pod)."""
    assert settings.jwt.private_key is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(
        {
            "EXPORTER_ENVIRONMENT": "test",
            "EXPORTER_LOG_JSON": "true",
            "EXPORTER_LOG_LEVEL": "WARNING",
            "EXPORTER_POSTGRES__DSN": settings.postgres.dsn.get_secret_value(),
            "EXPORTER_REDIS__URL": settings.redis.url.get_secret_value(),
            "EXPORTER_REDIS__QUEUE_NAME": settings.redis.queue_name,
            "EXPORTER_DYNAMO__ENDPOINT_URL": str(settings.dynamo.endpoint_url),
            "EXPORTER_DYNAMO__TABLE_PREFIX": settings.dynamo.table_prefix,
            "EXPORTER_JWT__PRIVATE_KEY": settings.jwt.private_key.get_secret_value(),
            # The fuzzer signs in many times from one address; throttling has its own tests.
            "EXPORTER_AUTH__LOGIN_MAX_ATTEMPTS_PER_ADDRESS": "1000000",
            "EXPORTER_AUTH__LOGIN_MAX_FAILURES_PER_ACCOUNT": "1000000",
            # Nor would the daily export quota leave POST /v1/exports anything but 429 once
            # the fuzzer has cancelled a few exports; the quota has its own tests.
            "EXPORTER_EXPORTS__MAX_PER_DAY": "1000000",
        }
    )
    return env


@pytest.fixture(name="live_api")
def _fix_live_api(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "exporter"), "api", "--host", "127.0.0.1", "--port", str(port)],
        env=api_environment(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "api.log").read_text()) from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow
async def test_the_live_api_keeps_its_documented_contract(
    live_api: str,
    settings: Settings,
    signing_key: SigningKey,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    user = await make_user()
    # Valid for the whole run, whatever the budget.
    tokens = TokenService(settings.jwt.model_copy(update={"access_ttl_s": 900}), signing_key)
    pair = tokens.issue_pair(user.user_id, list(Scope), now=utcnow() - timedelta(seconds=5))
    schemathesis = shutil.which("schemathesis", path=str(BIN))
    assert schemathesis, "schemathesis is a dev dependency"
    command = [
        schemathesis,
        "--config-file",
        str(CONFIG),
        "run",
        f"{live_api}/api/docs/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {pair.access_token}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_S),
        "--workers",
        "2",
        "--seed",
        "20261127",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    result = await _run(command, cwd=tmp_path)  # its caches stay out of the work tree
    assert result.returncode == 0, result.stdout[-20000:]


async def _run(command: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        timeout=MAX_TIME_S + 60,
        check=False,
        cwd=cwd,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
    )
