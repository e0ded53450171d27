"""Rows -> file: the user's memberships, rendered by PostgreSQL's COPY, into an open file.

The worker's run (``jobs/run.py``) and the benchmark (``bench/export.py``) both call
``write_export_file``, so the benchmark measures exactly what users get. Database trouble
becomes ``ExportFailed``: transient (``database_unavailable``) when a later try can get
past it, permanent (``database_error``) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import asyncpg

from exporter.csvstream import ExportEncoder
from exporter.errors import ExportFailed
from exporter.jobs.progress import ExportProgress
from exporter.models import ExportFormat, ExportJob
from exporter.store.memberships import copy_memberships

# PostgreSQL failures that a later attempt can get past (connection trouble, overload,
# serialization); everything else from the database is a bug or bad data and fails at once.
_TRANSIENT_PG = (
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.InterfaceError,
    ConnectionError,
    TimeoutError,
)
# Waiting longer than this for a pool connection means the pool is wedged, not busy (a
# worker runs fewer exports at once than the pool has connections): retry later instead.
POOL_ACQUIRE_TIMEOUT_S = 30.0


def export_file_name(job: ExportJob) -> str:
    return f"memberships-{job.created_at:%Y-%m-%d}.{job.format.value}"


@dataclass(frozen=True, slots=True)
class ExportFile:
    rows: int
    csv_bytes: int
    file_bytes: int
    sha256: str  # of the file as written (after BOM and gzip)


async def write_export_file(
    pool: asyncpg.Pool[Any],
    user_id: str,
    out: IO[bytes],
    *,
    fmt: ExportFormat,
    bom: bool,
    progress: ExportProgress | None = None,
    timeout_s: float | None = None,
) -> ExportFile:
    """Write the user's export (CSV, optionally gzipped) to ``out``. The worker and the
    benchmark both call this, so the benchmark measures exactly what users get.

    With ``progress``, the rows are first counted in the COPY's snapshot, every chunk is
    counted on its way through, and progress writes run beside the COPY (see
    ``jobs/progress.py``); a write that raises ``ConditionFailed`` stops the COPY.
    """
    encoder = ExportEncoder(fmt, bom=bom)

    if progress is None:

        async def sink(chunk: bytes) -> None:
            out.write(encoder.encode(chunk))

    else:
        count = progress.count

        async def sink(chunk: bytes) -> None:
            count(chunk)
            out.write(encoder.encode(chunk))

    try:
        async with pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn:
            if progress is None:
                rows = await copy_memberships(conn, user_id, sink, timeout_s=timeout_s)
            else:
                rows = await progress.run(
                    copy_memberships(
                        conn, user_id, sink, on_start=progress.start, timeout_s=timeout_s
                    )
                )
    except _TRANSIENT_PG as exc:
        raise ExportFailed(
            "database_unavailable", f"database: {type(exc).__name__}", transient=True
        ) from exc
    except asyncpg.PostgresError as exc:
        raise ExportFailed("database_error", f"database: {type(exc).__name__}") from exc
    out.write(encoder.finish())
    out.flush()
    return ExportFile(
        rows=rows,
        csv_bytes=encoder.csv_bytes,
        file_bytes=encoder.file_bytes,
        sha256=encoder.sha256(),
    )
