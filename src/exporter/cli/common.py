"""What every ``exporter`` subcommand shares: running a coroutine, opening the resources,
reading a password, and saying plainly which dependency could not be reached."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from exporter.config import Settings
from exporter.errors import CommandError

if TYPE_CHECKING:
    from exporter.resources import Resources

PG_HINT = (
    "Is PostgreSQL running? Start it with:\n"
    "  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)
REDIS_HINT = (
    "Is Redis running? Start it with:\n"
    "  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
)
DYNAMO_HINT = "Is DynamoDB reachable? Locally, `make run` starts DynamoDB Local for you."


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def with_resources(settings: Settings, work: Callable[[Resources], Any]) -> Any:
    """Open the service's clients (no replica pool: commands never read exports), run
    ``work(resources)``, close them."""

    from exporter.resources import open_resources  # not for commands that need none

    async def go() -> Any:
        async with open_resources(settings, pg_min_size=0, export_reads=False) as resources:
            coro: Coroutine[Any, Any, Any] = work(resources)
            return await coro

    return asyncio.run(go())


def read_password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise CommandError("pass the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise CommandError("the password must have at least 8 characters")
    return password


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
