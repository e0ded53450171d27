"""``make bench-rush``: the morning of the 1st on one box (issue 15's benchmark).

Everything real and on 127.0.0.1: DynamoDB Local, moto's S3 server, an SMTP sink in a
process of its own that timestamps each e-mail (``bench/smtp_sink.py``), a PostgreSQL
database of this run's own, and per round the API (``exporter api``) and two worker
processes. Seeded once and kept for every round: ``--small-users`` (1,000) with
``--small-rows`` (1,000) memberships each and ``--large-users`` (10) with ``--large-rows``
(500,000). Each round every user signs in over HTTP first, then all of them POST their
export within ``--spread-s`` (10 s) in random order, open loop (about 200 creates in flight
at the peak on the 2-vCPU box), and the round ends when the sink has every e-mail.

Three rounds, printed side by side (markdown) and written to ``var/bench/rush-*.json``:

(a) routing off: ``exports.routing_enabled=false``, one queue, two ``exporter worker``
    processes (``worker.max_jobs`` slots each): today's single pool;
(b) routing on: two ``exporter worker --queue default --queue large`` processes, each with
    ``worker.max_jobs`` small and ``worker.large_max_jobs`` large slots;
(c) as (b) without the large users: the baseline of "small p99 with routing on at most 2x
    small p99 without large users".

Per round: small exports' request → e-mail p50/p95/p99 (e-mail arrival as the sink saw
it), each large export's request → e-mail, small exports/min, POST p50/p99 and the peak in
flight, CPU per export per process from /proc (API, each worker, the DynamoDB Local JVM,
PostgreSQL backends of this database, the sink, moto) and all-in per small export, and
DynamoDB calls per create and per run from ``exporter_dynamodb_calls_total`` on the API's
and the workers' /metrics ("n/a" while the service does not count them).

Exit status 0 when every export of every round was accepted and e-mailed exactly once
(no failure notice); the issue's targets are printed, not enforced: a loaded machine
misses them for reasons of its own. ``--help`` for sizes (``--small-users 50 --large-users
2 --large-rows 50000`` runs in about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from argon2 import PasswordHasher
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bench.loadtest import drop_database, machine, pct, service_versions
from exporter.auth import DEFAULT_SCOPES, SigningKey
from exporter.aws import open_dynamo, open_s3
from exporter.config import (
    DynamoSettings,
    PostgresSettings,
    RedisSettings,
    S3Settings,
    Settings,
    SmtpSettings,
    WorkerSettings,
)
from exporter.dev.dynamodb import start_dynamodb
from exporter.dev.ports import free_port, stop_process, wait_for_port
from exporter.dev.s3 import start_s3
from exporter.dev.stack import ensure_database
from exporter.mail.messages import KIND_EXPORT, KIND_FAILURE_NOTICE
from exporter.models import User, utcnow
from exporter.queue import open_arq_redis
from exporter.store.files import ExportFiles
from exporter.store.migrations import migrate
from exporter.store.seed import ensure_organizations
from exporter.store.tables import create_tables
from exporter.store.users import UserStore

OUT = Path("var/bench")
HOST = "127.0.0.1"
PASSWORD = "rush-hour-password"  # noqa: S105 - every bench user's; only loopback sees it
DYNAMODB_CALLS = "exporter_dynamodb_calls"  # the counter's family name (…_total samples)
# The operations that write (the target: at most 3 per successful small run).
DYNAMODB_WRITES = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
)
# The targets (2 vCPU, everything local), printed beside the results.
TARGET_P99_RATIO = 2.0
TARGET_SMALL_PER_MIN = 2000
TARGET_CPU_MS_PER_SMALL = 45.0
TARGET_POST_P99_MS = 500.0
# Processes that stand in for AWS's services here; in AWS their CPU is not ours.
STAND_INS = frozenset({"dynamodb-local", "s3 (moto)", "smtp sink"})


@dataclass(frozen=True)
class Round:
    key: str
    title: str
    routing: bool
    with_large: bool


ROUNDS = (
    Round("a", "(a) routing off", routing=False, with_large=True),
    Round("b", "(b) routing on", routing=True, with_large=True),
    Round("c", "(c) routing on, no large users", routing=True, with_large=False),
)


@dataclass(frozen=True)
class BenchUser:
    user_id: str
    email: str
    kind: str  # "small", "large", or "warmup" (small, used once before the first round)

    @property
    def large(self) -> bool:
        return self.kind == "large"


# --- the stack: started once, seeded once ---------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    base_env: dict[str, str]
    users: list[BenchUser]
    mail_log: Path
    roles: dict[int, str]  # pid -> role, for the CPU report
    database: str


@contextlib.contextmanager
def rush_stack(args: argparse.Namespace, run: str) -> Iterator[Stack]:
    """DynamoDB Local, moto S3, the SMTP sink, the database seeded: everything but the API
    and the workers, which each round starts with its own settings."""
    OUT.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        dynamo = start_dynamodb(log_path=OUT / f"rush-{run}-dynamodb.log")
        cleanup.callback(dynamo.stop)
        s3 = start_s3(log_path=OUT / f"rush-{run}-s3.log")
        cleanup.callback(s3.stop)
        mail_log = OUT / f"rush-{run}-mail.jsonl"
        smtp_port = free_port()
        sink_cmd = ["-m", "bench.smtp_sink", "--port", str(smtp_port), "--out", str(mail_log)]
        with open(OUT / f"rush-{run}-smtp.log", "ab") as log:
            sink = subprocess.Popen(
                [sys.executable, *sink_cmd],
                stdout=log,
                stderr=log,
            )
        cleanup.callback(stop_process, sink)
        wait_for_port(smtp_port, timeout_s=30)
        key = SigningKey.generate()
        database = (
            f"exporter_rush_{args.small_users}x{args.small_rows}_"
            f"{args.large_users}x{args.large_rows}"
            if args.keep_database
            else f"exporter_rush_{run}"
        )
        settings = Settings(
            postgres=PostgresSettings(
                dsn=SecretStr(f"postgresql://postgres@{HOST}:5432/{database}")
            ),
            redis=RedisSettings(queue_name=f"exporter-rush:{run}"),
            dynamo=DynamoSettings(endpoint_url=dynamo.endpoint_url, table_prefix=f"rush{run}-"),
            s3=S3Settings(endpoint_url=s3.endpoint_url, bucket=f"exporter-rush-{run}"),
            smtp=SmtpSettings(host=HOST, port=smtp_port),
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "EXPORTER_LOG_JSON": "true",
                "EXPORTER_POSTGRES__DSN": settings.postgres.dsn.get_secret_value(),
                "EXPORTER_REDIS__URL": settings.redis.url.get_secret_value(),
                "EXPORTER_DYNAMO__ENDPOINT_URL": dynamo.endpoint_url,
                "EXPORTER_DYNAMO__TABLE_PREFIX": settings.dynamo.table_prefix,
                "EXPORTER_S3__ENDPOINT_URL": s3.endpoint_url,
                "EXPORTER_S3__BUCKET": settings.s3.bucket,
                "EXPORTER_SMTP__HOST": HOST,
                "EXPORTER_SMTP__PORT": str(smtp_port),
                # One key for the API and the workers (the links in large exports' e-mails).
                "EXPORTER_JWT__PRIVATE_KEY": key.private_pem(),
                "EXPORTER_JWT__ACCESS_TTL_S": "900",
                # Three rounds: three exports per user today; and every sign-in comes from
                # one address. The bench measures; it does not test the limits.
                "EXPORTER_EXPORTS__MAX_PER_DAY": "1000",
                "EXPORTER_AUTH__LOGIN_MAX_ATTEMPTS_PER_ADDRESS": "1000000000",
                "EXPORTER_EXPORTS__LARGE_THRESHOLD_ROWS": str(args.large_threshold),
                **{f"EXPORTER_WORKER__{k.upper()}": str(v) for k, v in worker_overrides(args)},
            }
        )
        if not args.keep_database:
            cleanup.callback(lambda: asyncio.run(drop_database(database)))
        cleanup.callback(lambda: asyncio.run(forget_queues(settings)))
        users = asyncio.run(prepare(settings, args))
        roles = {dynamo.process.pid: "dynamodb-local", s3.process.pid: "s3 (moto)"}
        roles[sink.pid] = "smtp sink"
        roles[asyncio.run(redis_pid(settings))] = "redis"
        yield Stack(settings, env, users, mail_log, roles, database)


async def redis_pid(settings: Settings) -> int:
    """The Redis server's process (on this machine: the bench's Redis is on loopback)."""
    redis = await open_arq_redis(settings.redis)
    try:
        info = await redis.info("server")
    finally:
        await redis.aclose()
    return int(info["process_id"])


def worker_overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    """Worker settings given on the command line (the shipped defaults otherwise)."""
    found: list[tuple[str, object]] = []
    for name in ("max_jobs", "large_max_jobs", "poll_delay_s", "nice"):
        value = getattr(args, name)
        if value is not None:
            found.append((name, value))
    return found


async def prepare(settings: Settings, args: argparse.Namespace) -> list[BenchUser]:
    """Database (migrated, seeded unless a kept one already is), tables, bucket, users."""
    dsn = settings.postgres.dsn.get_secret_value()
    await ensure_database(dsn)
    await asyncio.to_thread(migrate, dsn)
    conn = await asyncpg.connect(dsn)
    try:
        users = await seeded_users(conn, args)
    finally:
        await conn.close()
    # A cheap hash (argon2id at its lowest cost) so 1,010 sign-ins take seconds: signing in
    # happens before the burst and is not what the bench measures.
    password_hash = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    async with open_dynamo(settings.dynamo) as client:
        await create_tables(client, settings.dynamo)
        store = UserStore(client, settings.dynamo)
        for i in range(0, len(users), 25):
            await asyncio.gather(
                *(
                    store.create(
                        User(
                            user_id=u.user_id,
                            email=u.email,
                            password_hash=password_hash,
                            active=True,
                            scopes=DEFAULT_SCOPES,
                            created_at=utcnow(),
                        )
                    )
                    for u in users[i : i + 25]
                )
            )
    async with open_s3(settings.s3) as client:
        await ExportFiles(client, settings.s3).ensure_bucket()
    return users


# The demo seed's rows (store/seed.py), for many users in one statement: hostile names,
# NULL end dates, every plan and status.
_SEED = """
WITH orgs AS (SELECT array_agg(id ORDER BY id) AS ids FROM organizations)
INSERT INTO memberships (user_id, organization_id, plan, status, role, started_on,
                         ends_on, auto_renew, price, currency, created_at, updated_at)
SELECT u.id,
       orgs.ids[1 + (g % array_length(orgs.ids, 1))],
       (ARRAY['free', 'pro', 'team', 'enterprise', '=1+1'])[1 + g % 5],
       (ARRAY['active', 'trialing', 'past_due', 'cancelled', 'expired'])[1 + g % 5],
       (ARRAY['member', 'admin', 'owner', 'billing'])[1 + g % 4],
       date '2020-01-01' + (g % 1500),
       CASE WHEN g % 7 = 0 THEN NULL ELSE date '2020-01-01' + (g % 1500) + 365 END,
       g % 2 = 0,
       round(((g % 10000) / 100.0)::numeric, 2),
       (ARRAY['EUR', 'USD', 'GBP', 'JPY'])[1 + g % 4],
       timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => g * 37),
       timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => g * 41)
FROM unnest($1::uuid[]) AS u(id), generate_series(1, $2::int) AS g, orgs
"""


async def seeded_users(conn: asyncpg.Connection[Any], args: argparse.Namespace) -> list[BenchUser]:
    """The bench's users, seeding them first unless this (kept) database already has them."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS rush_users"
        " (user_id uuid PRIMARY KEY, email text NOT NULL, kind text NOT NULL)"
    )
    rows = await conn.fetch("SELECT user_id, email, kind FROM rush_users ORDER BY email")
    have = [BenchUser(str(r["user_id"]), r["email"], r["kind"]) for r in rows]
    wanted = {"small": args.small_users, "large": args.large_users, "warmup": args.warmup_users}
    if all(sum(u.kind == kind for u in have) == n for kind, n in wanted.items()):
        print(f"reusing the seeded database ({len(have)} users)", flush=True)
        return have
    started = time.monotonic()
    await conn.execute("TRUNCATE memberships, rush_users")
    await ensure_organizations(conn)
    users = [
        BenchUser(str(uuid.uuid4()), f"rush-{kind}-{i:05d}@example.com", kind)
        for kind, count in wanted.items()
        for i in range(count)
    ]
    small = [u.user_id for u in users if not u.large]
    for i in range(0, len(small), 200):  # 200,000 rows a statement at the default size
        await conn.execute(_SEED, small[i : i + 200], args.small_rows)
    for user in users:
        if user.large:
            await conn.execute(_SEED, [user.user_id], args.large_rows)
    await conn.executemany(
        "INSERT INTO rush_users (user_id, email, kind) VALUES ($1, $2, $3)",
        [(u.user_id, u.email, u.kind) for u in users],
    )
    # The create's count is index-only: it needs the visibility map a VACUUM writes.
    await conn.execute("VACUUM ANALYZE memberships")
    total = (args.small_users + args.warmup_users) * args.small_rows
    total += args.large_users * args.large_rows
    print(f"seeded {total:,} memberships in {time.monotonic() - started:.0f} s", flush=True)
    return users


async def forget_queues(settings: Settings) -> None:
    """This run's Redis keys (every round's queues, pools, runs, results)."""
    redis = await open_arq_redis(settings.redis)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis.queue_name}*")]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i : i + 500])
    finally:
        await redis.aclose()


# --- one round's processes --------------------------------------------------------------------


@dataclass
class Processes:
    api_url: str
    api_metrics: str
    worker_metrics: list[str]
    queue_name: str
    combined: bool
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.started:
            stop_process(proc)


def start_round(stack: Stack, rnd: Round, run: str, workers: int) -> Processes:
    """The API and ``workers`` worker processes with this round's settings."""
    api_port = free_port()
    queue = f"{stack.settings.redis.queue_name}:{rnd.key}"
    env = {
        **stack.base_env,
        "EXPORTER_REDIS__QUEUE_NAME": queue,
        "EXPORTER_EXPORTS__ROUTING_ENABLED": str(rnd.routing).lower(),
        "EXPORTER_API__HOST": HOST,
        "EXPORTER_API__PORT": str(api_port),
        "EXPORTER_API__PUBLIC_URL": f"http://{HOST}:{api_port}",
        "EXPORTER_WORKER__METRICS_HOST": HOST,
    }
    url = f"http://{HOST}:{api_port}"
    procs = Processes(url, f"{url}/metrics", [], queue, combined=rnd.routing)
    procs.started.append(spawn(stack, env, f"rush-{run}-{rnd.key}-api", "api"))
    # With routing on, each process serves both pools: the box has two worker processes.
    queues = ["--queue", "default", "--queue", "large"] if rnd.routing else []
    for n in range(1, workers + 1):
        port = free_port()
        procs.worker_metrics.append(f"http://{HOST}:{port}/metrics")
        worker_env = {**env, "EXPORTER_WORKER__METRICS_PORT": str(port), "HOSTNAME": f"rush-{n}"}
        procs.started.append(
            spawn(stack, worker_env, f"rush-{run}-{rnd.key}-worker-{n}", "worker", *queues)
        )
        stack.roles[procs.started[-1].pid] = f"worker-{n}"
    stack.roles[procs.started[0].pid] = "api"
    return procs


def spawn(stack: Stack, env: dict[str, str], name: str, *args: str) -> subprocess.Popen[bytes]:
    with open(OUT / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "exporter", *args], env=env, stdout=log, stderr=log
        )


async def wait_started(stack: Stack, procs: Processes, workers: int) -> None:
    """The API ready and every worker's pools healthy (their health keys in Redis)."""
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{procs.api_url}/readyz") as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not become ready")
            await asyncio.sleep(0.2)
    redis = await open_arq_redis(stack.settings.redis)
    try:
        pools = [procs.queue_name] + ([f"{procs.queue_name}:large"] if procs.combined else [])
        while True:
            healthy = 0
            for pool in pools:
                healthy += len([k async for k in redis.scan_iter(match=f"{pool}:health-check:*")])
            if healthy >= workers * len(pools):
                return
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.started):
                raise TimeoutError("the workers did not start (see var/bench/rush-*.log)")
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()


# --- measuring ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """CPU (user + system) a live process has used, from /proc; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """CPU per role over a round: our children by role, PostgreSQL backends of this database
    (found in pg_stat_activity as they come and go), and this process (the load generator).
    Sampled every ``every_s``; a process's last sample counts if it ends mid-round."""

    def __init__(self, roles: dict[int, str], database: str, *, every_s: float = 0.5) -> None:
        self.roles = dict(roles)
        self.roles[os.getpid()] = "load generator"
        self.database = database
        self.every_s = every_s
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.backends: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection[Any] | None = None

    async def start(self) -> None:
        self._conn = await asyncpg.connect(f"postgresql://postgres@{HOST}:5432/{self.database}")
        await self._sample(first=True)
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self._sample(first=False)

    async def _sample(self, *, first: bool) -> None:
        assert self._conn is not None
        backends = await self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.database,
        )
        self.backends |= {int(r["pid"]) for r in backends}
        for pid in [*self.roles, *self.backends]:
            used = cpu_seconds(pid)
            if used is None:
                continue
            # A backend first seen mid-round was opened during it: it started from zero.
            self.first.setdefault(pid, used if first or pid in self.roles else 0.0)
            self.last[pid] = used

    async def stop(self) -> dict[str, float]:
        """CPU seconds per role since ``start``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._sample(first=False)
        assert self._conn is not None
        await self._conn.close()
        used: dict[str, float] = {}
        for pid, last in self.last.items():
            role = self.roles.get(pid, "postgres")
            used[role] = used.get(role, 0.0) + last - self.first.get(pid, last)
        return used


Calls = dict[str, float]  # DynamoDB operation -> calls so far


def dynamodb_calls_in(text: str) -> Calls | None:
    """``exporter_dynamodb_calls_total`` by operation, from a Prometheus text page; None
    when the page has no such counter."""
    found: Calls | None = None
    for family in text_string_to_metric_families(text):
        if family.name in (DYNAMODB_CALLS, f"{DYNAMODB_CALLS}_total"):
            found = {}
            for sample in family.samples:
                if sample.name == f"{DYNAMODB_CALLS}_total":
                    operation = sample.labels.get("operation", "")
                    found[operation] = found.get(operation, 0.0) + sample.value
    return found


async def dynamodb_calls(http: aiohttp.ClientSession, url: str) -> Calls | None:
    """The process's DynamoDB calls so far (None: it does not count them, or no answer)."""
    try:
        async with http.get(url) as response:
            return dynamodb_calls_in(await response.text())
    except aiohttp.ClientError:
        return None


async def count_calls(procs: Processes) -> tuple[Calls | None, Calls | None]:
    """DynamoDB calls so far: the API's, and all the workers' together."""
    async with aiohttp.ClientSession() as http:
        api = await dynamodb_calls(http, procs.api_metrics)
        per_worker = [await dynamodb_calls(http, url) for url in procs.worker_metrics]
    if any(calls is None for calls in per_worker):
        return api, None
    workers: Calls = {}
    for calls in per_worker:
        for operation, n in (calls or {}).items():
            workers[operation] = workers.get(operation, 0.0) + n
    return api, workers


def calls_between(before: Calls | None, after: Calls | None) -> Calls | None:
    """The calls made between two readings, by operation."""
    if before is None or after is None:
        return None
    return {op: n - before.get(op, 0.0) for op, n in after.items() if n - before.get(op, 0.0)}


class MailLog:
    """The sink's lines (one per e-mail), read as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.exports: dict[str, list[float]] = {}  # export id -> arrivals of its export e-mail
        self.notices: dict[str, int] = {}  # export id -> failure notices
        self.unrecognised = 0

    def read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            for line in f:
                if not line.endswith("\n"):
                    break  # half-written: read it next time
                self.offset += len(line.encode())
                entry = json.loads(line)
                if entry["kind"] == KIND_EXPORT:
                    self.exports.setdefault(entry["export_id"], []).append(entry["t"])
                elif entry["kind"] == KIND_FAILURE_NOTICE:
                    self.notices[entry["export_id"]] = self.notices.get(entry["export_id"], 0) + 1
                else:
                    self.unrecognised += 1

    def resolved(self, export_id: str) -> bool:
        return export_id in self.exports or export_id in self.notices


@dataclass
class Sent:
    user: BenchUser
    at: float  # wall clock, when the POST went out
    post_s: float
    status: int
    export_id: str | None
    estimated_rows: int | None = None  # as the 202 said: None when the count at create failed


async def sign_in(api_url: str, users: list[BenchUser], *, concurrency: int = 8) -> dict[str, str]:
    """Every user signs in over HTTP (POST /v1/auth/token): user id -> access token."""
    tokens: dict[str, str] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(http: aiohttp.ClientSession, user: BenchUser) -> None:
        async with (
            gate,
            http.post(
                "/v1/auth/token", json={"email": user.email, "password": PASSWORD}
            ) as response,
        ):
            body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"sign-in of {user.email}: {response.status} {body}")
            tokens[user.user_id] = body["access_token"]

    async with aiohttp.ClientSession(base_url=api_url) as http:
        await asyncio.gather(*(one(http, u) for u in users))
    return tokens


async def burst(
    api_url: str, users: list[BenchUser], tokens: dict[str, str], *, spread_s: float, seed: int
) -> tuple[list[Sent], int, float]:
    """Every user POSTs once, evenly spread over ``spread_s`` in a random order, never
    waiting for answers. Returns what was sent, the peak in flight and when it started."""
    order = list(users)
    random.Random(seed).shuffle(order)  # noqa: S311 - an order, not a secret
    sent: list[Sent] = []
    in_flight = peak = 0
    timeout = aiohttp.ClientTimeout(total=300)

    async def one(http: aiohttp.ClientSession, user: BenchUser) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        at, t0 = time.time(), time.perf_counter()
        status, export_id, estimated = 0, None, None
        try:
            async with http.post(
                "/v1/exports",
                json={"format": "csv"},
                headers={"Authorization": f"Bearer {tokens[user.user_id]}"},
            ) as response:
                body = await response.read()
                status = response.status
                if status == 202:
                    job = json.loads(body)
                    export_id, estimated = job["id"], job.get("estimated_rows")
        except (aiohttp.ClientError, TimeoutError):
            status = -1
        finally:
            in_flight -= 1
        sent.append(Sent(user, at, time.perf_counter() - t0, status, export_id, estimated))

    # No connection limit: an open loop, as a thousand browsers would be.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        base_url=api_url, connector=connector, timeout=timeout
    ) as http:
        started_wall, start = time.time(), time.monotonic()
        tasks = []
        for i, user in enumerate(order):
            await asyncio.sleep(max(0.0, start + i * spread_s / len(order) - time.monotonic()))
            tasks.append(asyncio.create_task(one(http, user)))
        await asyncio.gather(*tasks)
    return sent, peak, started_wall


async def warm_up(
    procs: Processes, users: list[BenchUser], mail: MailLog, timeout_s: float
) -> None:
    """A small burst nobody measures, before the first round: DynamoDB Local's JIT and
    PostgreSQL's caches are then as warm for round (a) as for the rounds after it."""
    tokens = await sign_in(procs.api_url, users)
    sent, _, _ = await burst(procs.api_url, users, tokens, spread_s=1.0, seed=0)
    ids = {s.export_id for s in sent if s.export_id is not None}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(mail.resolved(e) for e in ids):
        await asyncio.sleep(0.1)
        mail.read()


async def run_round(
    stack: Stack, rnd: Round, args: argparse.Namespace, run: str, mail: MailLog, *, first: bool
) -> dict[str, Any]:
    users = [u for u in stack.users if u.kind == "small" or (rnd.with_large and u.large)]
    procs = start_round(stack, rnd, run, args.workers)
    try:
        await wait_started(stack, procs, args.workers)
        warmup = [u for u in stack.users if u.kind == "warmup"]
        if first and warmup:
            await warm_up(procs, warmup, mail, args.timeout_s)
        signed_in = time.monotonic()
        tokens = await sign_in(procs.api_url, users)
        sign_in_s = time.monotonic() - signed_in
        calls_before = await count_calls(procs)
        sampler = CpuSampler(stack.roles, stack.database)
        await sampler.start()
        sent, peak, started = await burst(
            procs.api_url, users, tokens, spread_s=args.spread_s, seed=args.seed
        )
        accepted = {s.export_id: s for s in sent if s.export_id is not None}
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline:
            mail.read()
            if all(mail.resolved(e) for e in accepted):
                break
            await asyncio.sleep(0.1)
        cpu = await sampler.stop()
        calls_after = await count_calls(procs)
        await asyncio.sleep(args.settle_s)  # a second e-mail for an export would show now
        mail.read()
    finally:
        procs.stop()
    result = summarise(
        rnd, sent, accepted, mail, started, peak, cpu, calls_before, calls_after, sign_in_s
    )
    shipped = WorkerSettings()
    small_slots = args.max_jobs or shipped.max_jobs
    large_slots = (args.large_max_jobs or shipped.large_max_jobs) if rnd.routing else 0
    result["slots_per_process"] = {"small": small_slots, "large": large_slots}
    result["worker_processes"] = args.workers
    result["worker_nice"] = args.nice
    return result


def summarise(
    rnd: Round,
    sent: list[Sent],
    accepted: dict[str, Sent],
    mail: MailLog,
    started: float,
    peak: int,
    cpu: dict[str, float],
    calls_before: tuple[Calls | None, Calls | None],
    calls_after: tuple[Calls | None, Calls | None],
    sign_in_s: float,
) -> dict[str, Any]:
    delivered = {e: mail.exports[e] for e in accepted if e in mail.exports}
    small = {e: s for e, s in accepted.items() if not s.user.large}
    large = {e: s for e, s in accepted.items() if s.user.large}
    small_latency = [delivered[e][0] - s.at for e, s in small.items() if e in delivered]
    large_latency = sorted(delivered[e][0] - s.at for e, s in large.items() if e in delivered)
    small_done = [delivered[e][0] for e in small if e in delivered]
    span = (max(small_done) - started) if small_done else float("nan")
    errors: dict[str, int] = {}
    for s in sent:
        if s.status != 202:
            errors[f"POST {s.status}"] = errors.get(f"POST {s.status}", 0) + 1
    missing = [e for e in accepted if e not in delivered]
    twice = [e for e in delivered if len(delivered[e]) != 1]
    notices = [e for e in accepted if e in mail.notices]
    for name, found in (("no_email", missing), ("emailed_twice", twice), ("notice", notices)):
        if found:
            errors[name] = len(found)
    all_in = sum(v for k, v in cpu.items() if k != "load generator")
    ours = sum(v for k, v in cpu.items() if k not in STAND_INS and k != "load generator")
    exports = len(delivered)
    api_calls, worker_calls = (
        calls_between(before, after)
        for before, after in zip(calls_before, calls_after, strict=True)
    )
    worker_writes = (
        None
        if worker_calls is None
        else sum(n for op, n in worker_calls.items() if op in DYNAMODB_WRITES)
    )
    # With routing on, an export whose count failed at create (export.size_unknown: the
    # API's pool or PostgreSQL too busy for the 2 s the count gets) went to the default queue.
    unknown = [s for s in accepted.values() if s.estimated_rows is None] if rnd.routing else []
    return {
        "round": rnd.key,
        "title": rnd.title,
        "routing": rnd.routing,
        "asked": {
            "small": sum(not s.user.large for s in sent),
            "large": sum(s.user.large for s in sent),
        },
        "accepted": len(accepted),
        "delivered_once": sum(1 for e in delivered if len(delivered[e]) == 1),
        "errors": errors,
        "sign_in_s": round(sign_in_s, 1),
        "size_unknown_at_create": {
            "small": sum(not s.user.large for s in unknown),
            "large": sum(s.user.large for s in unknown),
        },
        "post_ms": {
            "p50": round(pct([s.post_s * 1000 for s in sent], 50), 1),
            "p99": round(pct([s.post_s * 1000 for s in sent], 99), 1),
            "peak_in_flight": peak,
            "last_answered_s": round(
                max((s.at + s.post_s for s in sent), default=started) - started, 2
            ),
        },
        "small_request_to_email_ms": {
            "n": len(small_latency),
            **{f"p{p}": round(pct(small_latency, p) * 1000, 1) for p in (50, 95, 99)},
            "max": round(max(small_latency, default=float("nan")) * 1000, 1),
        },
        "small_per_min": round(len(small_done) / span * 60) if small_done and span > 0 else None,
        "small_done_after_s": round(span, 2),
        "large_request_to_email_s": [round(v, 2) for v in large_latency],
        "cpu_s": {k: round(v, 3) for k, v in sorted(cpu.items())},
        "cpu_ms_per_export": {
            k: round(v / exports * 1000, 1) for k, v in sorted(cpu.items()) if exports
        },
        "cpu_ms_all_in_per_small_export": round(all_in / len(small_done) * 1000, 1)
        if small_done
        else None,
        "cpu_ms_ours_per_small_export": round(ours / len(small_done) * 1000, 1)
        if small_done
        else None,
        "dynamodb_calls_per_create": round(sum(api_calls.values()) / len(accepted), 2)
        if api_calls is not None and accepted
        else None,
        "dynamodb_calls_per_run": round(sum(worker_calls.values()) / exports, 2)
        if worker_calls is not None and exports
        else None,
        "dynamodb_writes_per_run": round(worker_writes / exports, 2)
        if worker_writes is not None and exports
        else None,
        "dynamodb_calls": {"api": api_calls, "workers": worker_calls},
    }


# --- the report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:,.0f}"


def table(rounds: list[dict[str, Any]]) -> str:
    """The rounds side by side, one metric per row (markdown)."""
    roles = sorted({k for r in rounds for k in r["cpu_ms_per_export"]})

    def large_cell(r: dict[str, Any]) -> str:
        times = r["large_request_to_email_s"]
        if not times:
            return "-"
        return f"{times[0]:.1f} / {times[len(times) // 2]:.1f} / {times[-1]:.1f}"

    def na(value: Any) -> str:
        return "n/a" if value is None else str(value)

    lines: list[tuple[str, list[str]]] = [
        (
            "exports asked (small + large)",
            [f"{r['asked']['small']} + {r['asked']['large']}" for r in rounds],
        ),
        (
            "accepted / e-mailed exactly once",
            [f"{r['accepted']} / {r['delivered_once']}" for r in rounds],
        ),
        (
            "worker processes x slots (small + large), at nice",
            [
                f"{r['worker_processes']} x ({r['slots_per_process']['small']} + "
                f"{r['slots_per_process']['large']}), {r.get('worker_nice', 0)}"
                for r in rounds
            ],
        ),
        ("errors", [", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0" for r in rounds]),
        (
            "**small: request → e-mail p50 / p95 / p99 (max), ms**",
            [
                "{} / {} / **{}** ({})".format(
                    *(_ms(r["small_request_to_email_ms"][k]) for k in ("p50", "p95", "p99", "max"))
                )
                for r in rounds
            ],
        ),
        ("**small exports / min**", [f"**{na(r['small_per_min'])}**" for r in rounds]),
        (
            "last small e-mail, s after the first POST",
            [na(r["small_done_after_s"]) for r in rounds],
        ),
        ("large: request → e-mail min / median / max, s", [large_cell(r) for r in rounds]),
        (
            "POST p50 / p99, ms",
            [f"{_ms(r['post_ms']['p50'])} / {_ms(r['post_ms']['p99'])}" for r in rounds],
        ),
        (
            "size unknown at create, small + large (routed to the default queue)",
            [
                "-"
                if not r["routing"]
                else f"{r['size_unknown_at_create']['small']} + "
                f"{r['size_unknown_at_create']['large']}"
                for r in rounds
            ],
        ),
        ("POSTs in flight at the peak", [str(r["post_ms"]["peak_in_flight"]) for r in rounds]),
        (
            "last POST answered, s after the first",
            [str(r["post_ms"]["last_answered_s"]) for r in rounds],
        ),
    ]
    for role in roles:
        lines.append(
            (
                f"CPU ms per export: {role}",
                [_ms(r["cpu_ms_per_export"].get(role)) for r in rounds],
            )
        )
    lines += [
        (
            "**CPU ms all-in per small export** (every process but the load generator)",
            [f"**{_ms(r['cpu_ms_all_in_per_small_export'])}**" for r in rounds],
        ),
        (
            "CPU ms per small export without the stand-ins (API, workers, PostgreSQL, Redis)",
            [_ms(r.get("cpu_ms_ours_per_small_export")) for r in rounds],
        ),
        ("DynamoDB calls per create", [na(r["dynamodb_calls_per_create"]) for r in rounds]),
        (
            "DynamoDB calls (writes) per run",
            [
                f"{na(r['dynamodb_calls_per_run'])} ({na(r.get('dynamodb_writes_per_run'))})"
                for r in rounds
            ],
        ),
    ]
    out = ["| | " + " | ".join(r["title"] for r in rounds) + " |"]
    out.append("|---|" + "---:|" * len(rounds))
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in lines]
    return "\n".join(out)


def targets(rounds: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's targets against this run, one line each: met, missed or not measured."""
    lines = []
    b, c = rounds.get("b"), rounds.get("c")
    if b and c:
        p99_b, p99_c = b["small_request_to_email_ms"]["p99"], c["small_request_to_email_ms"]["p99"]
        ok = p99_b <= TARGET_P99_RATIO * p99_c
        lines.append(
            f"small p99 routing on {p99_b:,.0f} ms <= {TARGET_P99_RATIO:g} x without large users "
            f"({p99_c:,.0f} ms): {'met' if ok else 'MISSED'}"
        )
    if b:
        per_min = b["small_per_min"] or 0
        lines.append(
            f"small exports/min (routing on) {per_min} >= {TARGET_SMALL_PER_MIN}: "
            f"{'met' if per_min >= TARGET_SMALL_PER_MIN else 'MISSED'}"
        )
        post = b["post_ms"]["p99"]
        lines.append(
            f"POST p99 (routing on) {post:,.0f} ms <= {TARGET_POST_P99_MS:g}: "
            f"{'met' if post <= TARGET_POST_P99_MS else 'MISSED'}"
        )
    if c:
        cpu = c["cpu_ms_all_in_per_small_export"]
        verdict = "n/a" if cpu is None else "met" if cpu <= TARGET_CPU_MS_PER_SMALL else "MISSED"
        lines.append(
            f"CPU all-in per small export {cpu} ms <= {TARGET_CPU_MS_PER_SMALL:g}: {verdict}"
        )
    return lines


def default_threshold(small_rows: int, large_rows: int) -> int:
    """The shipped threshold (100,000) when it tells the two sizes apart, else halfway."""
    return 100_000 if small_rows <= 100_000 < large_rows else (small_rows + large_rows) // 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rush",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--small-users", type=int, default=1000)
    parser.add_argument("--small-rows", type=int, default=1000)
    parser.add_argument("--large-users", type=int, default=10)
    parser.add_argument("--large-rows", type=int, default=500_000)
    parser.add_argument(
        "--large-threshold",
        type=int,
        help="exports.large_threshold_rows (default: the shipped 100,000 when it separates "
        "the sizes, else halfway between them)",
    )
    parser.add_argument(
        "--warmup-users",
        type=int,
        default=200,
        help="small users of an unmeasured burst before the first round (warms DynamoDB "
        "Local's JIT and PostgreSQL's caches for round (a) as for the others)",
    )
    parser.add_argument("--spread-s", type=float, default=10.0, help="every POST within this")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--max-jobs", type=int, help="worker.max_jobs (default: shipped)")
    parser.add_argument(
        "--large-max-jobs", type=int, help="worker.large_max_jobs (default: shipped)"
    )
    parser.add_argument("--poll-delay-s", type=float, help="worker.poll_delay_s (default: shipped)")
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="worker.nice: the workers' CPU priority on this one box, the API's and the "
        "stand-ins' staying 0 (README, Operations: a shared box answers requests first)",
    )
    parser.add_argument(
        "--rounds",
        default="abc",
        help="which rounds, in this order (e.g. cba to see what running first costs)",
    )
    parser.add_argument("--timeout-s", type=float, default=1800, help="per round, for e-mails")
    parser.add_argument("--settle-s", type=float, default=2.0, help="wait for duplicates")
    parser.add_argument("--seed", type=int, default=1, help="the POSTs' random order")
    parser.add_argument(
        "--keep-database",
        action="store_true",
        help="keep the seeded database (named by the sizes) and reuse it next time",
    )
    parser.add_argument("--out", type=Path, help="the JSON report (default var/bench/rush-*.json)")
    args = parser.parse_args(argv)
    if not args.rounds or set(args.rounds) - set("abc") or len(set(args.rounds)) < len(args.rounds):
        parser.error("--rounds takes each of a, b and c at most once, e.g. abc or cb")
    if args.large_threshold is None:
        args.large_threshold = default_threshold(args.small_rows, args.large_rows)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = secrets.token_hex(3)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sizes": {
            "small_users": args.small_users,
            "small_rows": args.small_rows,
            "large_users": args.large_users,
            "large_rows": args.large_rows,
            "large_threshold_rows": args.large_threshold,
            "warmup_users": args.warmup_users,
            "spread_s": args.spread_s,
            "worker_processes": args.workers,
        },
        "worker_settings": dict(worker_overrides(args)) or "shipped defaults",
        "rounds": [],
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanups run on a stop, too
    # A thousand open connections in this process and as many in the API (which inherits it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        wanted = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    with rush_stack(args, run) as stack:
        report["machine"].update(asyncio.run(service_versions(stack.settings)))
        mail = MailLog(stack.mail_log)
        by_key = {r.key: r for r in ROUNDS}
        for rnd in (by_key[k] for k in args.rounds):
            print(f"round {rnd.title} ...", flush=True)
            first = not report["rounds"]
            result = asyncio.run(run_round(stack, rnd, args, run, mail, first=first))
            report["rounds"].append(result)
            print(json.dumps(result), flush=True)
        report["unrecognised_emails"] = mail.unrecognised
        report["mail_log"] = str(stack.mail_log)
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    rendered = table(sorted(report["rounds"], key=lambda r: str(r["round"])))  # a, b, c
    report["targets"] = targets({r["round"]: r for r in report["rounds"]})
    path = args.out or OUT / f"rush-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print()
    print(rendered)
    print()
    for line in report["targets"]:
        print(f"target: {line}")
    print(f"report: {path}")
    failed = [r for r in report["rounds"] if r["errors"]]
    for r in failed:
        print(f"FAILED: {r['title']}: {r['errors']}", file=sys.stderr)
    return 1 if failed or report["unrecognised_emails"] else 0


if __name__ == "__main__":
    sys.exit(main())
