"""The ``exporter`` command: run the API or a worker, migrate, create tables, seed, develop.

Settings are built once here and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from exporter.config import Settings, load_settings

PG_HINT = (
    "Is PostgreSQL running? Start it with:\n"
    "  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)
REDIS_HINT = (
    "Is Redis running? Start it with:\n"
    "  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
)
DYNAMO_HINT = "Is DynamoDB reachable? Locally, `make run` starts DynamoDB Local for you."

# A fixed namespace so the demo user's id is the same on every run (re-seeding replaces rows).
DEMO_NAMESPACE = uuid.UUID("6f1c8a52-3b0e-4d39-9f43-2a8f3f0f5e11")
DEMO_EMAIL = "demo@example.com"


class CliError(Exception):
    """A failure to report in one plain sentence, without a traceback."""


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def explain_connection_error(exc: BaseException, settings: Settings) -> str | None:
    """A plain-language message for 'could not reach X', or None if it is something else."""
    import asyncpg
    from botocore.exceptions import BotoCoreError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from exporter.errors import StoreUnavailable

    if isinstance(exc, RedisConnectionError):
        return f"Redis is not reachable ({exc}).\n{REDIS_HINT}"
    if isinstance(exc, (BotoCoreError, StoreUnavailable)):
        where = settings.dynamo.endpoint_url or "AWS"
        return f"DynamoDB at {where} is not reachable ({exc}).\n{DYNAMO_HINT}"
    import psycopg

    pg_errors = (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        psycopg.OperationalError,
    )
    if isinstance(exc, pg_errors):
        return f"PostgreSQL is not reachable ({exc}).\n{PG_HINT}"
    return None


# --- commands -------------------------------------------------------------------------------


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from exporter.app import create_app
    from exporter.logs import configure_logging

    try:
        app = create_app(settings)
    except ValueError as exc:
        raise CliError(f"invalid configuration: {exc}") from None
    configure_logging(settings)
    web.run_app(
        app,
        host=args.host or settings.api.host,
        port=args.port or settings.api.port,
        access_log=None,
        # SIGTERM: stop listening, let in-flight requests finish this long, then run the
        # cleanup context (pools closed). The chart's grace period leaves room for it.
        shutdown_timeout=settings.api.shutdown_timeout_s,
        print=None,
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.jobs.worker import check_worker_health, run_worker_forever
    from exporter.queue import RedisNotDurable

    if args.check:
        return check_worker_health(settings)
    try:
        run_worker_forever(settings)
    except RedisNotDurable as exc:
        raise CliError(f"refusing to start the worker: {exc}") from None
    return 0


def cmd_db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.store.migrations import migrate

    applied = migrate(settings.postgres.dsn.get_secret_value())
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def cmd_tables_create(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.resources import open_dynamo
    from exporter.store.tables import create_tables

    async def go() -> list[str]:
        async with open_dynamo(settings.dynamo) as client:
            return await create_tables(client, settings.dynamo)

    created = _run(go())
    print(f"created {len(created)} table(s)" + (f": {', '.join(created)}" if created else ""))
    return 0


async def create_user(
    settings: Settings,
    *,
    email: str,
    password: str,
    user_id: str | None = None,
    scopes: Sequence[str] | None = None,
) -> str:
    """Create a user in DynamoDB; returns the id. Shared by the CLI, the demo and tests."""
    from exporter.auth import DEFAULT_SCOPES
    from exporter.models import User, utcnow
    from exporter.passwords import Passwords
    from exporter.resources import open_dynamo
    from exporter.store.users import UserStore, normalise_email

    user = User(
        user_id=user_id or str(uuid.uuid4()),
        email=normalise_email(email),
        password_hash=Passwords().hash(password),
        active=True,
        # An explicit empty list means no scopes, not the defaults.
        scopes=tuple(DEFAULT_SCOPES if scopes is None else scopes),
        created_at=utcnow(),
    )
    async with open_dynamo(settings.dynamo) as client:
        await UserStore(client, settings.dynamo).create(user)
    return user.user_id


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.errors import ConditionFailed

    password = _read_password(args)
    try:
        user_id = _run(create_user(settings, email=args.email, password=password))
    except ConditionFailed:
        raise CliError(f"a user with e-mail {args.email} already exists") from None
    print(user_id)
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise CliError("pass the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise CliError("the password must have at least 8 characters")
    return password


async def seed_demo(
    settings: Settings, *, email: str, password: str, memberships: int
) -> tuple[str, int]:
    """The demo user (same id every run) with exactly ``memberships`` rows."""
    import asyncpg

    from exporter.errors import ConditionFailed
    from exporter.store.seed import seed_memberships

    user_id = str(uuid.uuid5(DEMO_NAMESPACE, email.lower()))
    # Already there with a persistent DynamoDB: keep it; its rows are replaced below.
    with contextlib.suppress(ConditionFailed):
        await create_user(settings, email=email, password=password, user_id=user_id)
    conn = await asyncpg.connect(settings.postgres.dsn.get_secret_value())
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM memberships WHERE user_id = $1", user_id)
            rows = await seed_memberships(conn, user_id, memberships)
    finally:
        await conn.close()
    return user_id, rows


def cmd_demo_seed(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password(args) if args.password_stdin else secrets.token_urlsafe(12)
    user_id, rows = _run(
        seed_demo(settings, email=args.email, password=password, memberships=args.memberships)
    )
    print(f"user {args.email} ({user_id}) has {rows} memberships")
    if not args.password_stdin:
        print(f"password: {password}")
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.dev.stack import run_demo, run_interactive

    if args.dev_command == "run":
        return run_interactive(settings, memberships=args.memberships)
    return run_demo(settings, memberships=args.memberships)


# --- parsing --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exporter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run an export worker")
    worker.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker on this queue is healthy (liveness probe)",
    )
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="PostgreSQL schema").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("migrate", help="apply pending migrations").set_defaults(func=cmd_db_migrate)

    tables = sub.add_parser("tables", help="DynamoDB tables (local)").add_subparsers(
        dest="tables_command", required=True
    )
    tables.add_parser("create", help="create missing tables").set_defaults(func=cmd_tables_create)

    users = sub.add_parser("users", help="user accounts").add_subparsers(
        dest="users_command", required=True
    )
    create = users.add_parser("create", help="create a user")
    create.add_argument("--email", required=True)
    create.add_argument("--password-stdin", action="store_true")
    create.set_defaults(func=cmd_users_create)

    demo = sub.add_parser("demo", help="demo data").add_subparsers(
        dest="demo_command", required=True
    )
    seed = demo.add_parser("seed", help="create the demo user and memberships")
    seed.add_argument("--memberships", type=int, default=1000)
    seed.add_argument("--email", default=DEMO_EMAIL)
    seed.add_argument("--password-stdin", action="store_true")
    seed.set_defaults(func=cmd_demo_seed)

    from exporter.ops import add_ops_parsers  # jobs list|show|retry|cancel, queue stats

    add_ops_parsers(sub)

    dev = sub.add_parser("dev", help="the local stack").add_subparsers(
        dest="dev_command", required=True
    )
    for name, text in (
        ("run", "start everything locally until Ctrl-C"),
        ("demo", "start everything, run one export end to end, stop"),
    ):
        p = dev.add_parser(name, help=text)
        p.add_argument("--memberships", type=int, default=1000)
        p.set_defaults(func=cmd_dev)
    return parser


def main(
    argv: Sequence[str] | None = None, *, settings_factory: Callable[[], Settings] = load_settings
) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_factory()
    except Exception as exc:  # pydantic's ValidationError: show it plainly
        print(f"exporter: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(settings, args))
    except CliError as exc:
        print(f"exporter: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = explain_connection_error(exc, settings)
        if message is None:
            raise
        print(f"exporter: {message}", file=sys.stderr)
        return 2
