"""Fixtures that start real services: DynamoDB Local and an SMTP sink on free loopback ports,
a PostgreSQL database of this run's own, and a Redis queue name of this run's own.

Services start lazily (only tests that ask for them pay) and once per session. Under
pytest-xdist (``make pytest`` runs ``-n auto``) a session is one worker process: RUN_ID is
drawn per process, so every worker has its own database, table prefix, bucket, queue names
and its own DynamoDB Local, S3 server and SMTP sink. What the workers do share, the
repository's ``test-artifacts/`` and DynamoDB Local's download cache, is guarded by a file
lock below.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import botocore.session
import pytest
from aiohttp import web_app
from aiohttp.test_utils import TestClient, TestServer
from arq.worker import Worker
from pydantic import SecretStr

from exporter.accounts import create_user
from exporter.app import create_app
from exporter.auth import SigningKey, TokenService
from exporter.aws import open_dynamo, open_s3
from exporter.config import (
    DynamoSettings,
    Environment,
    JwtSettings,
    PostgresSettings,
    RedisSettings,
    S3Settings,
    Settings,
    SmtpSettings,
    WorkerSettings,
)
from exporter.dev.dynamodb import LocalDynamo, cache_root, ensure_dynamodb_local, start_dynamodb
from exporter.dev.s3 import LocalS3, start_s3
from exporter.dev.smtp import SmtpSink, start_smtp_sink
from exporter.jobs.worker import build_worker_settings
from exporter.models import ExportJob
from exporter.queue import operator_cancellations_key, pool_key, runs_key
from exporter.resources import Resources, open_resources
from exporter.store.files import ExportFiles
from exporter.store.migrations import migrate
from exporter.store.seed import seed_memberships
from exporter.store.tables import create_tables
from tests.helpers import TestUser, new_job

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
RUN_ID = secrets.token_hex(4)

# DynamoDB Local, and the one a fault test restarts, are JVMs that live for one session: with
# the client compiler only (C1) and the serial collector one starts in ~2.5 s instead of
# ~8.5 s on two busy cores, burns half the CPU, and serves the suite's few thousand requests
# no slower. A value set by the caller wins.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


# Every test opens its own AWS clients, each from a new botocore session, and every session
# built its own loader and parsed the same service models again: json.loads was a quarter of
# the suite's CPU. One loader per test process (the service data are the same files, and a
# loader only reads them) parses each once, as a long-lived process does in production.
botocore.session.create_loader = functools.cache(botocore.session.create_loader)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created if missing): one xdist worker at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first (`slow`, then the `faults` suite, 15-40 s each): under xdist they
    then overlap the many short tests instead of being the last thing one worker does while
    the other idles. The sort is stable, so the rest keep their order."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slow") is None,
            item.get_closest_marker("faults") is None,
        )
    )


@pytest.fixture(autouse=True)
def _release_finished_apps() -> Iterator[None]:
    """aiohttp memoises each handler's middleware chain in a module-level LRU cache keyed by
    the application (1024 entries), which keeps every app a test built alive, with its
    pools and AWS clients: ~20 MB each, gigabytes over the suite. One app per process in
    production makes that harmless there; here, drop the entries after each test."""
    yield
    web_app._cached_build_middleware.cache_clear()


@pytest.fixture(name="dynamo", scope="session")
def _fix_dynamo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDynamo]:
    log = tmp_path_factory.mktemp("dynamodb") / "dynamodb.log"
    # On a machine that has never fetched DynamoDB Local, the first worker downloads it while
    # the others wait, instead of every worker downloading it at once.
    with file_lock(cache_root() / "dynamodb-local.lock"):
        ensure_dynamodb_local()
    local = start_dynamodb(log_path=log)
    yield local
    local.stop()


@pytest.fixture(name="s3", scope="session")
def _fix_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    local = start_s3(log_path=tmp_path_factory.mktemp("s3") / "s3.log")
    yield local
    local.stop()


@pytest.fixture(name="smtp_sink", scope="session")
def _fix_smtp_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    sink = start_smtp_sink(tmp_path_factory.mktemp("outbox"))
    yield sink
    sink.stop()


@contextlib.asynccontextmanager
async def migrated_database(name: str) -> AsyncIterator[str]:
    """A new database, migrated; dropped when the block ends."""
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        await asyncio.to_thread(migrate, dsn)
        yield dsn
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(name="pg_dsn", scope="session")
async def _fix_pg_dsn() -> AsyncIterator[str]:
    """A database of this test run's own, migrated, dropped at the end."""
    async with migrated_database(f"exporter_test_{RUN_ID}") as dsn:
        yield dsn


@pytest.fixture(name="replica_dsn", scope="session")
async def _fix_replica_dsn() -> AsyncIterator[str]:
    """A second database standing in for a read replica: same schema, its own rows, so a
    test can tell from an export's content which database it was read from."""
    async with migrated_database(f"exporter_test_{RUN_ID}_replica") as dsn:
        yield dsn


@pytest.fixture(name="signing_key", scope="session")
def _fix_signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(name="base_settings", scope="session")
async def _fix_base_settings(
    dynamo: LocalDynamo, s3: LocalS3, smtp_sink: SmtpSink, pg_dsn: str, signing_key: SigningKey
) -> Settings:
    settings = Settings(
        environment=Environment.TEST,
        log_json=True,
        postgres=PostgresSettings(dsn=SecretStr(pg_dsn), pool_min_size=1, pool_max_size=5),
        redis=RedisSettings(url=SecretStr(REDIS_URL), queue_name=f"exporter-test:{RUN_ID}"),
        dynamo=DynamoSettings(endpoint_url=dynamo.endpoint_url, table_prefix=f"t{RUN_ID}-"),
        smtp=SmtpSettings(host=smtp_sink.host, port=smtp_sink.port),
        s3=S3Settings(endpoint_url=s3.endpoint_url, bucket=f"exporter-test-{RUN_ID}"),
        jwt=JwtSettings(private_key=SecretStr(signing_key.private_pem())),
        worker=WorkerSettings(max_tries=3),
    )
    async with open_dynamo(settings.dynamo) as client:
        await create_tables(client, settings.dynamo)
    async with open_s3(settings.s3) as client:
        await ExportFiles(client, settings.s3).ensure_bucket()
    return settings


@pytest.fixture(name="settings")
def _fix_settings(base_settings: Settings) -> Settings:
    """Per test: its own queue name, so no test sees another's messages."""
    queue = f"exporter-test:{RUN_ID}:{uuid.uuid4().hex[:8]}"
    return base_settings.model_copy(
        update={"redis": base_settings.redis.model_copy(update={"queue_name": queue})}
    )


@pytest.fixture(name="resources")
async def _fix_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings) as resources:
        yield resources
        queue = settings.redis.queue_name
        large = settings.redis.large_queue
        await resources.queue.redis.delete(
            queue,
            large,
            operator_cancellations_key(queue),
            *(key(q) for q in (queue, large) for key in (runs_key, pool_key)),
        )


@pytest.fixture(name="tokens")
def _fix_tokens(settings: Settings, signing_key: SigningKey) -> TokenService:
    return TokenService(settings.jwt, signing_key)


@pytest.fixture(name="client")
async def _fix_client(
    settings: Settings, tokens: TokenService
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings, tokens=tokens)
    async with TestClient(TestServer(app)) as client:
        yield client


MakeUser = Callable[..., Awaitable[TestUser]]


@pytest.fixture(name="make_user")
def _fix_make_user(settings: Settings) -> MakeUser:
    async def make(scopes: list[str] | None = None) -> TestUser:
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        password = secrets.token_urlsafe(12)
        user_id = await create_user(settings, email=email, password=password, scopes=scopes)
        return TestUser(user_id, email, password)

    return make


@pytest.fixture(name="pg")
async def _fix_pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


SeedRows = Callable[[str, int], Awaitable[int]]


@pytest.fixture(name="seed_rows")
def _fix_seed_rows(pg: asyncpg.Connection[Any]) -> SeedRows:
    async def seed(user_id: str, count: int) -> int:
        return await seed_memberships(pg, user_id, count)

    return seed


RunWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture(name="run_worker")
def _fix_run_worker(settings: Settings) -> RunWorker:
    """Run a real arq worker in burst mode until the queue is empty."""

    async def run(**overrides: Any) -> Worker:
        # No crons: the sweeper runs every 10 s and would turn up in the job counts of a
        # test that crosses a minute (tests call sweep_jobs/expire_jobs directly instead).
        kwargs = build_worker_settings(
            settings, burst=True, poll_delay=0, handle_signals=False, cron_jobs=[]
        )
        kwargs.update(overrides)
        worker = Worker(**kwargs)
        try:
            await worker.main()
        finally:
            await worker.close()
        return worker

    return run


@pytest.fixture(name="artifacts", scope="session")
def _fix_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-artifacts/, emptied by the first test of the run that writes there.

    Under xdist every worker has this fixture once, so the first worker to ask empties it
    and leaves a mark in the run's shared temporary folder (the parent of the workers'
    own); the others find the mark and keep what it wrote."""
    path = Path("test-artifacts")
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path
    run_tmp = tmp_path_factory.getbasetemp().parent
    with file_lock(run_tmp / "test-artifacts.lock"):
        emptied = run_tmp / "test-artifacts.emptied"
        if not emptied.exists():
            shutil.rmtree(path, ignore_errors=True)
            emptied.touch()
        path.mkdir(exist_ok=True)
    return path


SeededJob = Callable[[int], Awaitable[tuple[TestUser, ExportJob]]]


@pytest.fixture(name="seeded_job")
def _fix_seeded_job(resources: Resources, make_user: MakeUser, seed_rows: SeedRows) -> SeededJob:
    """A new user with ``rows`` memberships, and a queued export (not enqueued) of them."""

    async def make(rows: int) -> tuple[TestUser, ExportJob]:
        user = await make_user()
        await seed_rows(user.user_id, rows)
        return user, await new_job(resources, user.user_id)

    return make
