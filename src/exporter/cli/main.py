"""The ``exporter`` command: run the API or a worker, migrate, create tables, seed, develop.

Settings are built once here and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable, Sequence

from exporter.cli.common import explain_connection_error, read_password, run
from exporter.config import Settings, load_settings
from exporter.dev.demo import DEMO_EMAIL
from exporter.errors import CommandError

# --- commands -------------------------------------------------------------------------------


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.api.http_server import serve
    from exporter.app import create_app
    from exporter.logs import configure_logging

    try:
        app = create_app(settings)
    except ValueError as exc:
        raise CommandError(f"invalid configuration: {exc}") from None
    configure_logging(settings)
    # aiohttp's server with its parser's refusals answered as problems (api/http_server.py).
    # SIGTERM: stop listening, let in-flight requests finish for shutdown_timeout_s, then
    # run the cleanup context (pools closed). The chart's grace period leaves room for it.
    serve(
        app,
        host=args.host or settings.api.host,
        port=args.port or settings.api.port,
        api=settings.api,
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.errors import RedisNotDurable
    from exporter.jobs.worker import check_worker_health, run_worker_forever

    queues = set(args.queue or ["default"])
    if args.check:  # every pool this process serves must be healthy
        return max(check_worker_health(settings, large=q == "large") for q in sorted(queues))
    try:
        if len(queues) > 1:
            from exporter.jobs.pools import run_pools_forever

            run_pools_forever(settings)
        else:
            run_worker_forever(settings, large=queues == {"large"})
    except RedisNotDurable as exc:
        raise CommandError(f"refusing to start the worker: {exc}") from None
    return 0


def cmd_db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.store.migrations import migrate

    applied = migrate(settings.postgres.dsn.get_secret_value())
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def cmd_tables_create(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.aws import open_dynamo
    from exporter.store.tables import create_tables

    async def go() -> list[str]:
        async with open_dynamo(settings.dynamo) as client:
            return await create_tables(client, settings.dynamo)

    created = run(go())
    print(f"created {len(created)} table(s)" + (f": {', '.join(created)}" if created else ""))
    return 0


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.accounts import create_user
    from exporter.errors import ConditionFailed

    password = read_password(args)
    try:
        user_id = run(create_user(settings, email=args.email, password=password))
    except ConditionFailed:
        raise CommandError(f"a user with e-mail {args.email} already exists") from None
    print(user_id)
    return 0


def cmd_demo_seed(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.dev.demo import seed_demo

    password = read_password(args) if args.password_stdin else secrets.token_urlsafe(12)
    user_id, rows = run(
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
    worker.add_argument(
        "--queue",
        choices=("default", "large"),
        action="append",
        help="which pool: the default queue (and the crons) or the large exports' queue "
        "(redis.large_queue_name); given twice, one process serves both, with "
        "worker.max_jobs and worker.large_max_jobs slots",
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

    from exporter.cli.ops import add_ops_parsers  # jobs list|show|retry|cancel, queue stats

    add_ops_parsers(sub)

    from exporter.cli.schedules import add_schedule_parsers  # schedules list|pause|resume

    add_schedule_parsers(sub)

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
    except CommandError as exc:
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
