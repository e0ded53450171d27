"""Rows -> file: the user's memberships, rendered by PostgreSQL's COPY, into an open file.

CSV, csv.gz and JSON lines are the COPY's bytes (``formats/``); xlsx is COPY's bytes too
(one SpreadsheetML row per line), wrapped into the workbook's zip as they stream; parquet is
written from COPY's typed rendering, spooled to a scratch file at the COPY's speed and then
read back in blocks by pyarrow in a thread (so the event loop, and the heartbeat, keep
running) into the format's writer.

The worker's run (``jobs/run.py``) and the benchmark (``bench/export.py``) both call
``write_export_file``, so the benchmark measures exactly what users get. Database trouble
becomes ``ExportFailed``: transient (``database_unavailable``) when a later try can get
past it, permanent (``database_error``) otherwise.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg

from exporter.csvstream import ExportEncoder
from exporter.errors import ExportFailed
from exporter.formats import FileFormat, spec_for
from exporter.formats.base import HashingSink, RowStream
from exporter.jobs.progress import ExportProgress
from exporter.models import ExportFormat, ExportJob
from exporter.selection import ALL, ExportSelection
from exporter.store.memberships import Conn, copy_memberships, text_lengths

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
    """memberships-2026-12-02.csv, or with what was chosen:
    memberships-2026-12-02_status-active_plan-pro_3-columns_Europe_Paris.xlsx"""
    part = job.selection.file_name_part()
    return f"memberships-{job.created_at:%Y-%m-%d}{part}.{spec_for(job.format).extension}"


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
    selection: ExportSelection = ALL,
    temp_dir: Path | None = None,
) -> ExportFile:
    """Write the user's export in ``fmt`` (its columns, rows and time zone as ``selection``
    says) to ``out``. The worker and the benchmark both call this, so the benchmark
    measures exactly what users get.

    With ``progress``, the rows are first counted in the COPY's snapshot, every chunk is
    counted on its way through, and progress writes run beside the COPY (see
    ``jobs/progress.py``); a write that raises ``ConditionFailed`` stops the COPY.
    """
    spec = spec_for(fmt)
    if spec.open_writer is not None:
        return await _write_typed(
            pool,
            user_id,
            out,
            spec,
            progress=progress,
            timeout_s=timeout_s,
            selection=selection,
            temp_dir=temp_dir,
        )
    if spec.open_stream is not None:
        return await _write_stream(
            pool, user_id, out, spec, progress=progress, timeout_s=timeout_s, selection=selection
        )
    encoder = ExportEncoder(fmt, bom=bom)

    def write(chunk: bytes) -> None:
        out.write(encoder.encode(chunk))

    if progress is not None and spec.render == "json":
        progress.count(b"\n")  # JSON lines have no header line for the count to skip
    rows = await _copy(
        pool, user_id, write, spec, progress=progress, timeout_s=timeout_s, selection=selection
    )
    out.write(encoder.finish())
    out.flush()
    return ExportFile(
        rows=rows,
        csv_bytes=encoder.csv_bytes,
        file_bytes=encoder.file_bytes,
        sha256=encoder.sha256(),
    )


async def _copy(
    pool: asyncpg.Pool[Any],
    user_id: str,
    write: Callable[[bytes], object],
    spec: FileFormat,
    *,
    progress: ExportProgress | None,
    timeout_s: float | None,
    selection: ExportSelection,
    then: Callable[[], Awaitable[None]] | None = None,
    count_chunks: bool = True,
    before_copy: Callable[[Conn], Awaitable[None]] | None = None,
) -> int:
    """COPY the rows into ``write`` (with the heartbeat beside it when there is
    ``progress``, counting rows from the chunks if ``count_chunks``), then await ``then``
    under the same heartbeat; returns the rows."""
    if progress is None or not count_chunks:

        async def sink(chunk: bytes) -> None:
            write(chunk)

    else:
        count = progress.count

        async def sink(chunk: bytes) -> None:
            count(chunk)
            write(chunk)

    async def work() -> int:
        async with pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn:
            rows = await copy_memberships(
                conn,
                user_id,
                sink,
                selection=selection,
                render=spec.render,
                on_start=None if progress is None else progress.start,
                before_copy=before_copy,
                timeout_s=timeout_s,
            )
        if then is not None:
            await then()  # the connection is back in the pool by now
        return rows

    try:
        return await (work() if progress is None else progress.run(work()))
    except _TRANSIENT_PG as exc:
        raise ExportFailed(
            "database_unavailable", f"database: {type(exc).__name__}", transient=True
        ) from exc
    except asyncpg.PostgresError as exc:
        raise ExportFailed("database_error", f"database: {type(exc).__name__}") from exc


async def _write_stream(
    pool: asyncpg.Pool[Any],
    user_id: str,
    out: IO[bytes],
    spec: FileFormat,
    *,
    progress: ExportProgress | None,
    timeout_s: float | None,
    selection: ExportSelection,
) -> ExportFile:
    """xlsx: COPY's rows straight into the format's stream (zipped as they arrive), after
    one query in the same snapshot for what the stream needs before the first row."""
    assert spec.open_stream is not None
    open_stream = spec.open_stream
    sink = HashingSink(out)
    streams: list[RowStream] = []
    copied = 0

    async def before_copy(conn: Conn) -> None:
        lengths = await text_lengths(conn, user_id, selection)
        streams.append(open_stream(sink, selection, lengths))

    def write(chunk: bytes) -> None:
        nonlocal copied
        copied += len(chunk)
        streams[0].write(chunk)

    if progress is not None:
        progress.count(b"\n")  # the rows have no header line for the count to skip
    rows = await _copy(
        pool,
        user_id,
        write,
        spec,
        progress=progress,
        timeout_s=timeout_s,
        selection=selection,
        before_copy=before_copy,
    )
    streams[0].close()
    out.flush()
    return ExportFile(rows=rows, csv_bytes=copied, file_bytes=sink.bytes, sha256=sink.sha256())


async def _write_typed(
    pool: asyncpg.Pool[Any],
    user_id: str,
    out: IO[bytes],
    spec: FileFormat,
    *,
    progress: ExportProgress | None,
    timeout_s: float | None,
    selection: ExportSelection,
    temp_dir: Path | None,
) -> ExportFile:
    """parquet: COPY's typed CSV to a scratch file (at the COPY's speed, holding
    the connection no longer than CSV does), then the format's writer in a thread."""
    assert spec.open_writer is not None
    open_writer = spec.open_writer
    if progress is not None:
        progress.count(b"\n")  # no header line to skip: rows are counted as written
    sink = HashingSink(out)
    stop = threading.Event()
    raw_bytes = 0
    with tempfile.TemporaryFile(dir=temp_dir) as raw:

        def convert() -> None:
            # Imported here: pyarrow loads only in a worker that writes a typed format.
            from exporter.formats.arrow import typed_batches

            raw.seek(0)
            writer = open_writer(sink, selection, temp_dir)
            for batch in typed_batches(raw, selection):
                if stop.is_set():
                    return  # the run was cancelled: the file is dropped anyway
                writer.write(batch)
                if progress is not None:
                    progress.advance(batch.num_rows)
            writer.close()

        async def then() -> None:
            nonlocal raw_bytes
            raw_bytes = raw.tell()
            try:
                await asyncio.to_thread(convert)
            except asyncio.CancelledError:
                stop.set()  # the thread stops at its next batch
                raise

        rows = await _copy(
            pool,
            user_id,
            raw.write,
            spec,
            progress=progress,
            timeout_s=timeout_s,
            selection=selection,
            then=then,
            # Progress counts rows as the writer writes them: that is most of the time,
            # while the COPY into the scratch file is over in seconds.
            count_chunks=False,
        )
    out.flush()
    return ExportFile(rows=rows, csv_bytes=raw_bytes, file_bytes=sink.bytes, sha256=sink.sha256())
