"""ExportProgress on its own: counting, the bounded write rate (an injected clock), and the
heartbeat beside a stalled COPY. The real store and a real COPY are in test_run.py."""

from __future__ import annotations

import asyncio

import pytest

from exporter.errors import ConditionFailed, StoreUnavailable
from exporter.jobs.progress import ExportProgress

HEADER = b"membership_id,organization_id,organization_name\n"


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Keeps every (rows_exported, total_rows) write, as the job record would see them."""

    def __init__(self, fail_on: int | None = None, error: Exception | None = None) -> None:
        self.writes: list[tuple[int, int | None]] = []
        self.fail_on, self.error = fail_on, error
        self._wrote = asyncio.Event()

    async def __call__(self, rows: int, total: int | None) -> None:
        self.writes.append((rows, total))
        self._wrote.set()
        if self.error is not None and len(self.writes) == self.fail_on:
            raise self.error

    async def wait_for_writes(self, count: int) -> None:
        while len(self.writes) < count:
            self._wrote.clear()
            await self._wrote.wait()


async def test_writes_once_at_start_then_at_most_once_per_interval() -> None:
    clock, recorder = FakeClock(), Recorder()
    progress = ExportProgress(recorder, interval_s=2.0, clock=clock)

    await progress.start(100)
    progress.count(HEADER)
    wrote = []
    # Ten rows every half second for five seconds: 10 chances to write, time for 2.
    for _ in range(10):
        clock.now += 0.5
        progress.count(b"a,b,c\n" * 10)
        wrote.append(await progress.tick())

    assert wrote == [False, False, False, True, False, False, False, True, False, False]
    assert recorder.writes == [(0, 100), (40, 100), (80, 100)]


async def test_nothing_is_written_before_streaming_starts() -> None:
    clock, recorder = FakeClock(), Recorder()
    progress = ExportProgress(recorder, interval_s=2.0, clock=clock)
    clock.now += 60
    assert await progress.tick() is False
    assert recorder.writes == []


async def test_rows_leave_out_the_header_and_never_pass_the_total() -> None:
    progress = ExportProgress(Recorder(), interval_s=2.0, clock=FakeClock())
    await progress.start(2)
    assert progress.rows == 0
    progress.count(HEADER + b'a,"Line\nBreak GmbH",c\n')
    # Two line feeds for one row with a quoted line break: the estimate overcounts ...
    assert progress.rows == 2
    progress.count(b"d,e,f\n")
    # ... and the total caps it.
    assert progress.rows == 2


async def test_rows_advance_only_with_the_stream_but_writes_continue() -> None:
    clock, recorder = FakeClock(), Recorder()
    progress = ExportProgress(recorder, interval_s=2.0, clock=clock)
    await progress.start(5)
    for _ in range(3):
        clock.now += 2.0
        assert await progress.tick()
    # No chunk arrived, yet every interval wrote: the write is the heartbeat.
    assert recorder.writes == [(0, 5)] * 4


async def stalled_copy(progress: ExportProgress, total: int, cancelled: asyncio.Event) -> int:
    """A COPY that counts, starts, sends its header and then waits forever."""
    await progress.start(total)
    progress.count(HEADER)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return total


async def test_a_stalled_stream_keeps_the_heartbeat_going() -> None:
    recorder = Recorder()
    progress = ExportProgress(recorder, interval_s=0.01)
    cancelled = asyncio.Event()
    task = asyncio.create_task(progress.run(stalled_copy(progress, 7, cancelled)))

    async with asyncio.timeout(10):
        await recorder.wait_for_writes(4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert set(recorder.writes) == {(0, 7)}
    assert cancelled.is_set()  # cancelling the run stops the COPY too


async def test_a_refused_write_stops_a_stalled_copy_and_raises() -> None:
    recorder = Recorder(fail_on=3, error=ConditionFailed("record_progress"))
    progress = ExportProgress(recorder, interval_s=0.01)
    cancelled = asyncio.Event()

    with pytest.raises(ConditionFailed):
        async with asyncio.timeout(10):
            await progress.run(stalled_copy(progress, 7, cancelled))

    assert cancelled.is_set()
    assert len(recorder.writes) == 3


async def test_a_refused_first_write_stops_before_the_copy() -> None:
    recorder = Recorder(fail_on=1, error=ConditionFailed("record_progress"))
    progress = ExportProgress(recorder, interval_s=0.01)

    with pytest.raises(ConditionFailed):
        await progress.run(stalled_copy(progress, 7, asyncio.Event()))
    assert recorder.writes == [(0, 7)]


async def test_an_unavailable_store_does_not_stop_the_export() -> None:
    recorder = Recorder(fail_on=2, error=StoreUnavailable("record_progress: ThrottlingException"))
    progress = ExportProgress(recorder, interval_s=0.01)

    async def copy() -> int:
        await progress.start(3)
        await recorder.wait_for_writes(4)
        progress.count(HEADER + b"1\n2\n3\n")
        return 3

    async with asyncio.timeout(10):
        assert await progress.run(copy()) == 3
    assert len(recorder.writes) >= 4
