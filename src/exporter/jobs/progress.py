"""Progress of a running export, written to its job record at a bounded rate.

Rows are counted from the CSV chunks COPY hands over (newlines, at C speed: nothing per row
in Python), and a heartbeat task beside the COPY writes the count at most once per
``interval_s``, plus once when streaming starts; it keeps going while the file is delivered.

The write is also the worker's **heartbeat**: it happens every interval whether or not rows
advanced (a stalled query still has a live worker behind it), so a recovery sweep can treat
a stale ``heartbeat_at`` on an ``in_progress`` job as a dead worker. When the write finds
that the job moved on (cancelled, or taken over by a newer attempt) the COPY is cancelled
and ``ConditionFailed`` propagates: the run stops and does nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from exporter.errors import StoreUnavailable

log = structlog.stdlib.get_logger("exporter.jobs.progress")

T = TypeVar("T")
# (rows_exported, total_rows) -> the write to the job record.
ProgressWriter = Callable[[int, int | None], Awaitable[None]]


class ExportProgress:
    """Counts rows as the CSV streams and keeps the job record (and heartbeat) current."""

    def __init__(
        self,
        write: ProgressWriter,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        beat_from: float | None = None,
    ) -> None:
        """``beat_from``: the ``clock`` reading when a heartbeat was last written elsewhere
        (the run's start): the first write is then due an interval after it, instead of
        when streaming starts, so an export shorter than the interval writes nothing."""
        self._write = write
        self._interval_s = interval_s
        self._clock = clock
        self._lines = 0
        self._last_write: float | None = beat_from
        self._started = asyncio.Event()
        self.total: int | None = None

    def count(self, chunk: bytes) -> None:
        """Called once per COPY chunk; cheap enough to leave the stream at full speed."""
        self._lines += chunk.count(b"\n")

    def advance(self, rows: int) -> None:
        """Rows written by a typed format's writer (parquet, xlsx), counted per block rather
        than from COPY's chunks; may be called from the writer's thread (one integer add)."""
        self._lines += rows

    @property
    def rows(self) -> int:
        """Data rows streamed so far (an estimate): lines minus the header, at most the total.

        A quoted field holding a line break counts as an extra line here; the clamp keeps
        the estimate within 0..total, and the job's final ``row_count`` is COPY's exact count.
        """
        rows = max(0, self._lines - 1)
        return rows if self.total is None else min(rows, self.total)

    async def start(self, total: int) -> None:
        """Streaming begins: note the total and write at once, so the heartbeat exists
        (unless one was written less than an interval ago: ``beat_from``)."""
        self.total = total
        if self.due_in() == 0:
            await self._flush()
        self._started.set()

    async def start_produced(self, total: int) -> None:
        """The file exists already (stored by an earlier run): every row is written, and
        the heartbeat runs while it is delivered."""
        self._lines = total + 1  # the header line, then every row
        await self.start(total)

    def due_in(self) -> float:
        """Seconds until the next write is due; 0 when it is due now."""
        if self._last_write is None:
            return 0.0
        return max(0.0, self._last_write + self._interval_s - self._clock())

    async def tick(self) -> bool:
        """Write if streaming has started and the interval has passed; True when it wrote."""
        if not self._started.is_set() or self.due_in() > 0:
            return False
        await self._flush()
        return True

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` (a COPY that calls ``start``) with the heartbeat beside it.

        If a write raises (``ConditionFailed``: the job moved on), ``work`` is cancelled and
        that error is raised here, even when the COPY is stalled and sends nothing. Later
        steps of the run (delivery) can go through ``run`` too, to keep the heartbeat going.
        """
        work_task = asyncio.create_task(work)
        beat_task = asyncio.create_task(self._beat())
        try:
            await asyncio.wait((work_task, beat_task), return_when=asyncio.FIRST_COMPLETED)
            if work_task.done():
                return work_task.result()
            # The heartbeat loop never returns, so it stopped with an error: stop the COPY.
            work_task.cancel()
            await asyncio.wait((work_task,))
            beat_task.result()
            raise AssertionError("the heartbeat ended without an error")
        finally:
            beat_task.cancel()
            work_task.cancel()
            await asyncio.gather(work_task, beat_task, return_exceptions=True)

    async def _beat(self) -> None:
        await self._started.wait()
        while True:
            await asyncio.sleep(self.due_in())
            await self.tick()

    async def _flush(self) -> None:
        self._last_write = self._clock()
        try:
            await self._write(self.rows, self.total)
        except StoreUnavailable as exc:
            # A missed update is not worth failing the export for; the next one retries.
            log.warning("export.progress_not_recorded", error=str(exc))
