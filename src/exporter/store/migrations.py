"""Schema migrations for PostgreSQL, applied by yoyo from versioned SQL files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

MIGRATIONS_PACKAGE = "exporter.store"


def _yoyo_url(dsn: str) -> str:
    # yoyo picks its driver from the scheme; we use psycopg 3 for migrations only.
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"unsupported database scheme {parts.scheme!r}")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


@contextmanager
def _backend(dsn: str) -> Iterator[Any]:
    backend = get_backend(_yoyo_url(dsn))
    try:
        yield backend
    finally:
        backend.connection.close()


def _migrations() -> Any:
    return read_migrations(str(files(MIGRATIONS_PACKAGE) / "migrations"))


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations under yoyo's lock (safe with concurrent callers)."""
    with _backend(dsn) as backend, backend.lock():
        to_apply = backend.to_apply(_migrations())
        backend.apply_migrations(to_apply)
        return [m.id for m in to_apply]


def pending(dsn: str) -> list[str]:
    """Ids of migrations not yet applied."""
    with _backend(dsn) as backend:
        return [m.id for m in backend.to_apply(_migrations())]
