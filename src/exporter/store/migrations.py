"""Schema migrations for PostgreSQL, applied by yoyo from versioned SQL files."""

from __future__ import annotations

from importlib.resources import files
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

MIGRATIONS_PACKAGE = "exporter.store"


def _yoyo_url(dsn: str) -> str:
    # yoyo picks its driver from the scheme; we use psycopg 3 for migrations only.
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"unsupported database scheme {parts.scheme!r}")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations under yoyo's lock; returns the ids it applied."""
    backend = get_backend(_yoyo_url(dsn))
    migrations = read_migrations(str(files(MIGRATIONS_PACKAGE) / "migrations"))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def pending(dsn: str) -> list[str]:
    backend = get_backend(_yoyo_url(dsn))
    migrations = read_migrations(str(files(MIGRATIONS_PACKAGE) / "migrations"))
    return [m.id for m in backend.to_apply(migrations)]
