"""The typed and line formats (jsonl, parquet, xlsx) in ``make bench``, against the same
run's ``psql \\copy`` CSV floor (``bench/export.py`` alternates them with it).

Each format's series: wall time of ``write_export_file`` (with the worker's progress
tracking) into a file, peak RSS growth of this process while it runs (VmHWM after a reset,
minus VmRSS before), client CPU (this process, all threads: pyarrow's reader runs in a
worker thread; xlsx zips in the event loop), and the file's size. One untimed run per format
comes first, so the one-off cost of importing pyarrow (measured apart: ``import_rss_mb``)
is not counted as the export's growth.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from bench.proc import cpu_s, reset_peak_rss, status_kb
from exporter.jobs.produce import write_export_file
from exporter.jobs.progress import ExportProgress
from exporter.models import ExportFormat

FORMATS = (ExportFormat.JSONL, ExportFormat.PARQUET, ExportFormat.XLSX)
# The targets, as ratios to the floor (docs/benchmarks.md).
TARGET_RATIO = {ExportFormat.JSONL: 1.5, ExportFormat.PARQUET: 2.5, ExportFormat.XLSX: 6.0}


def import_rss_mb() -> float:
    """What importing the typed formats' libraries adds to a process (once per worker)."""
    before = status_kb("VmRSS")
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401

    import exporter.formats.arrow
    import exporter.formats.parquet
    import exporter.formats.xlsx  # noqa: F401

    return round((status_kb("VmRSS") - before) / 1024, 1)


async def _nowhere(rows: int, total: int | None) -> None:
    pass


class FormatSeries:
    """One format's runs at one size."""

    def __init__(self, fmt: ExportFormat) -> None:
        self.fmt = fmt
        self.times: list[float] = []
        self.rss_delta_mb: list[float] = []
        self.cpu_s: list[float] = []
        self.size = 0

    async def run(
        self, pool: asyncpg.Pool[Any], user: str, path: Path, *, progress: bool, timed: bool
    ) -> None:
        reset_peak_rss()
        idle_kb = status_kb("VmRSS")
        cpu0 = cpu_s()
        started = time.perf_counter()
        tracker = ExportProgress(_nowhere, interval_s=2.0) if progress else None
        with path.open("wb") as out:
            written = await write_export_file(
                pool, user, out, fmt=self.fmt, bom=False, progress=tracker, temp_dir=path.parent
            )
        if timed:
            self.times.append(time.perf_counter() - started)
            self.cpu_s.append(cpu_s() - cpu0)
            self.rss_delta_mb.append((status_kb("VmHWM") - idle_kb) / 1024)
        self.size = written.file_bytes

    def result(self, rows: int, floor_median_s: float, gz_size: int) -> dict[str, Any]:
        median = statistics.median(self.times)
        cpu = statistics.median(self.cpu_s)
        key = self.fmt.value
        return {
            f"{key}_median_s": round(median, 3),
            f"{key}_ratio": round(median / floor_median_s, 3),
            f"{key}_mb": round(self.size / 1e6, 1),
            f"{key}_size_vs_csv_gz": round(self.size / gz_size, 2) if gz_size else None,
            f"{key}_peak_rss_delta_mb": round(max(self.rss_delta_mb), 1),
            f"{key}_client_cpu_s_per_million_rows": round(cpu * 1e6 / rows, 2),
        }


def steps(
    pool: asyncpg.Pool[Any],
    user: str,
    workdir: Path,
    *,
    progress: bool,
    formats: tuple[ExportFormat, ...] = FORMATS,
) -> tuple[list[FormatSeries], Callable[[], Awaitable[None]], list[Callable[[], Awaitable[None]]]]:
    """The series, a warm-up (one untimed run of each), and one timed step per format to
    alternate with the floor."""
    series = [FormatSeries(fmt) for fmt in formats]

    def step(s: FormatSeries, *, timed: bool) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            path = workdir / f"ours.{s.fmt.value}"
            await s.run(pool, user, path, progress=progress, timed=timed)

        return run

    async def warm_up() -> None:
        for s in series:
            await step(s, timed=False)()

    return series, warm_up, [step(s, timed=True) for s in series]
