"""Export engine benchmark: the project's export path against psql's own \\copy, same run.

    python -m bench.export [--rows 1000000 100000 10000] [--runs 5] [--no-progress]
                           [--no-delivery] [--no-formats] [--xlsx-up-to ROWS]
                           [--keep-db] [--json]

Creates its own database (dropped at the end unless ``--keep-db``), seeds one user per size
with N memberships scattered among other users' rows (two others after each of theirs),
then alternates, at least ``--runs`` (>= 5) times each: the floor (``psql \\copy (plain
SELECT) to file``), the project's export (``write_export_file``, the function the worker
calls, with the worker's progress tracking, through to the finished file), the gzip floor
(``\\copy … to program 'gzip -6 > file'``) and the project's ``csv.gz`` export. Reports
medians (COPY on 2 cores is bimodal run to run), the peak RSS growth of this process while
exporting (VmHWM after resetting it, minus VmRSS before), and client CPU. Then jsonl,
parquet and xlsx (``bench/formats.py``) alternate with the same floor: ratios, file size
against the csv.gz, peak RSS growth and client CPU per million rows.

Delivery (unless ``--no-delivery``): three more runs per size measure peak RSS from the
start of the export to the end of its delivery, as the worker delivers: into a spooled temp
file, then an email with the file attached when it fits ``exports.attachment_max_bytes``,
otherwise a streamed multipart upload to S3 (moto's server, a separate process) and an email
with the link; the SMTP server is an aiosmtpd sink in a separate process.

The last line is a JSON array with one object per size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench import formats as bench_formats
from bench.proc import cpu_s, reset_peak_rss, status_kb
from exporter.aws import open_s3
from exporter.config import ExportSettings, S3Settings, SmtpSettings
from exporter.delivery.email import encoded_message_size
from exporter.dev.ports import free_port, spawn_server, stop_process
from exporter.dev.s3 import start_s3
from exporter.jobs.produce import write_export_file
from exporter.jobs.progress import ExportProgress
from exporter.mail.messages import DownloadLink, ExportAttachment, build_export_message
from exporter.mail.smtp import Mailer
from exporter.models import ExportFormat, utcnow
from exporter.store.files import ExportFiles
from exporter.store.migrations import migrate
from exporter.store.seed import seed_memberships

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# BENCH_DB: another name, so two benchmarks on one server never drop each other's database.
DB_NAME = os.environ.get("BENCH_DB", "exporter_bench")
# The floor: the same rows and columns, no formatting or escaping, straight to a file.
PLAIN_QUERY = (
    "SELECT m.guid, o.guid, o.name, m.plan, m.status, m.role, m.started_on, m.ends_on,"
    " m.auto_renew, m.price, m.currency, m.created_at, m.updated_at"
    " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
    " WHERE m.user_id = '{user}' ORDER BY m.id"
)


@dataclass
class Series:
    times: list[float] = field(default_factory=list)
    rss_delta_mb: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    size: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _note(text: str) -> None:
    # Progress notes go to stderr, so stdout is the table and the JSON line (or the JSON
    # line alone with --json).
    print(text, file=sys.stderr, flush=True)


async def _seed(dsn: str, sizes: list[int]) -> dict[int, str]:
    users = {n: str(uuid.uuid4()) for n in sizes}
    conn = await asyncpg.connect(dsn)
    try:
        for n, user in users.items():
            started = time.perf_counter()
            await seed_memberships(conn, user, n, others_per_row=2)
            _note(
                f"seeded {n:>9,} rows for one user (+{2 * n:,} others) "
                f"in {time.perf_counter() - started:.1f}s"
            )
        await conn.execute("VACUUM ANALYZE memberships")
    finally:
        await conn.close()
    return users


async def _drop_db() -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    finally:
        await admin.close()


async def _recreate_db() -> str:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{DB_NAME}"
    await asyncio.to_thread(migrate, dsn)
    return dsn


def _psql(dsn: str, command: str) -> float:
    started = time.perf_counter()
    subprocess.run(["psql", dsn, "-q", "-c", command], check=True)
    return time.perf_counter() - started


async def _nowhere(rows: int, total: int | None) -> None:
    pass


async def _ours(
    pool: asyncpg.Pool[Any],
    user: str,
    path: Path,
    fmt: ExportFormat,
    series: Series,
    *,
    progress: bool,
) -> None:
    reset_peak_rss()
    idle_kb = status_kb("VmRSS")
    cpu0 = cpu_s()
    started = time.perf_counter()
    # The worker's default interval; the writes themselves are the job store's business.
    tracker = ExportProgress(_nowhere, interval_s=2.0) if progress else None
    with path.open("wb") as out:
        written = await write_export_file(pool, user, out, fmt=fmt, bom=False, progress=tracker)
    series.times.append(time.perf_counter() - started)
    series.cpu_s.append(cpu_s() - cpu0)
    series.rss_delta_mb.append((status_kb("VmHWM") - idle_kb) / 1024)
    series.size = written.file_bytes


@dataclass
class DeliveryTarget:
    """Where delivery runs send to: S3 (moto) and SMTP (an aiosmtpd sink), both local."""

    files: ExportFiles
    mailer: Mailer
    attachment_max_bytes: int


async def _delivered(
    pool: asyncpg.Pool[Any], user: str, target: DeliveryTarget, *, progress: bool
) -> tuple[str, float]:
    """One export delivered as the worker delivers it (jobs/run.py ``_produce_and_deliver``
    and delivery/email.py ``EmailChannel``, minus the job record writes); the delivery kind
    and peak RSS growth."""
    reset_peak_rss()
    idle_kb = status_kb("VmRSS")
    export_id = str(uuid.uuid4())
    file_name = f"memberships-{utcnow():%Y-%m-%d}.csv"
    compose = functools.partial(
        build_export_message,
        sender=target.mailer.sender,
        recipient="bench@example.com",
        export_id=export_id,
    )
    tracker = ExportProgress(_nowhere, interval_s=2.0) if progress else None
    with tempfile.SpooledTemporaryFile(max_size=ExportSettings().spool_max_bytes) as spool:
        written = await write_export_file(
            pool, user, spool, fmt=ExportFormat.CSV, bom=False, progress=tracker
        )
        spool.seek(0)
        if encoded_message_size(written.file_bytes) <= target.attachment_max_bytes:
            kind = "email_attachment"
            attachment = ExportAttachment(
                content=spool,  # read while the email is sent, as the worker does
                file_name=file_name,
                row_count=written.rows,
                byte_size=written.file_bytes,
            )
            message = compose(attachment=attachment)
        else:
            kind = "download_link"
            key = target.files.key_for(export_id, file_name)
            await target.files.upload(key, spool, size=written.file_bytes, content_type="text/csv")
            link = DownloadLink(
                url=f"http://127.0.0.1/v1/exports/{export_id}/download",
                expires_at=utcnow(),
                file_name=file_name,
                row_count=written.rows,
                byte_size=written.file_bytes,
            )
            message = compose(link=link)
        await target.mailer.send(message)
    return kind, (status_kb("VmHWM") - idle_kb) / 1024


@contextlib.asynccontextmanager
async def delivery_target() -> AsyncIterator[DeliveryTarget]:
    """moto's S3 server and an aiosmtpd sink, each its own process (not in our RSS)."""
    s3 = start_s3()
    smtp_port = free_port()
    sink = spawn_server(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{smtp_port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ],
        smtp_port,
        log_path=None,
    )
    try:
        s3_settings = S3Settings(endpoint_url=s3.endpoint_url, bucket="exporter-bench")
        async with open_s3(s3_settings) as client:
            files = ExportFiles(client, s3_settings)
            await files.ensure_bucket()
            yield DeliveryTarget(
                files=files,
                mailer=Mailer(SmtpSettings(host="127.0.0.1", port=smtp_port)),
                attachment_max_bytes=ExportSettings().attachment_max_bytes,
            )
    finally:
        stop_process(sink)
        s3.stop()


async def bench_delivery(
    pool: asyncpg.Pool[Any], user: str, target: DeliveryTarget, *, runs: int, progress: bool
) -> dict[str, Any]:
    """Peak RSS through delivery: the first (cold) run apart, then the worst of ``runs``."""
    kind, first = await _delivered(pool, user, target, progress=progress)
    warm = [(await _delivered(pool, user, target, progress=progress))[1] for _ in range(runs)]
    return {
        "delivery": kind,
        "delivery_first_rss_delta_mb": round(first, 1),
        "delivery_rss_delta_mb": round(max(warm), 1),
    }


async def bench_size(
    dsn: str,
    pool: asyncpg.Pool[Any],
    user: str,
    n: int,
    runs: int,
    workdir: Path,
    *,
    progress: bool = False,
    formats: bool = True,
    xlsx_up_to: int | None = None,
) -> dict[str, Any]:
    floor, ours, gz_floor, gz_ours = Series(), Series(), Series(), Series()
    chosen = tuple(
        f
        for f in bench_formats.FORMATS
        if f is not ExportFormat.XLSX or xlsx_up_to is None or n <= xlsx_up_to
    )
    typed, warm_up, typed_steps = bench_formats.steps(
        pool, user, workdir, progress=progress, formats=chosen
    )
    if formats:
        await warm_up()
    else:
        typed, typed_steps = [], []
    plain = PLAIN_QUERY.format(user=user)
    floor_file, ours_file = workdir / "floor.csv", workdir / "ours.csv"

    async def run_floor() -> None:
        floor.times.append(_psql(dsn, f"\\copy ({plain}) to '{floor_file}' csv header"))
        floor.size = floor_file.stat().st_size

    async def run_gz_floor() -> None:
        target = workdir / "floor.csv.gz"
        gz_floor.times.append(
            _psql(dsn, f"\\copy ({plain}) to program 'gzip -6 > {target}' csv header")
        )
        gz_floor.size = target.stat().st_size

    async def run_ours() -> None:
        await _ours(pool, user, ours_file, ExportFormat.CSV, ours, progress=progress)

    async def run_gz_ours() -> None:
        await _ours(
            pool, user, workdir / "ours.csv.gz", ExportFormat.CSV_GZ, gz_ours, progress=progress
        )

    for i in range(runs):
        # Alternate the order so neither side always runs on a warmer cache.
        pair = [run_floor, run_ours] if i % 2 == 0 else [run_ours, run_floor]
        gz_pair = [run_gz_floor, run_gz_ours] if i % 2 == 0 else [run_gz_ours, run_gz_floor]
        for step in pair + gz_pair + (typed_steps if i % 2 == 0 else typed_steps[::-1]):
            await step()
    result = {
        "rows": n,
        "median_s": round(ours.median, 3),
        "floor_median_s": round(floor.median, 3),
        "ratio": round(ours.median / floor.median, 3),
        "gz_median_s": round(gz_ours.median, 3),
        "gz_floor_median_s": round(gz_floor.median, 3),
        "gz_ratio": round(gz_ours.median / gz_floor.median, 3),
        "gz_size_ratio": round(gz_ours.size / gz_floor.size, 3),
        "csv_mb": round(ours.size / 1e6, 1),
        "peak_rss_delta_mb": round(max(ours.rss_delta_mb + gz_ours.rss_delta_mb), 1),
        "client_cpu_s": round(statistics.median(ours.cpu_s), 3),
        "client_cpu_s_per_million_rows": round(statistics.median(ours.cpu_s) * 1e6 / n, 2),
        "gz_client_cpu_s": round(statistics.median(gz_ours.cpu_s), 3),
    }
    for s in typed:
        result |= s.result(n, floor.median, gz_ours.size)
    return result


def _at_least_five(text: str) -> int:
    runs = int(text)
    if runs < 5:
        # COPY timings on 2 cores are bimodal: fewer runs give a median that is one mode.
        raise argparse.ArgumentTypeError("at least 5 runs, so the medians mean something")
    return runs


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 100_000, 10_000])
    parser.add_argument("--runs", type=_at_least_five, default=5)
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="export without the worker's progress tracking (to see what it costs)",
    )
    parser.add_argument(
        "--no-delivery", dest="delivery", action="store_false", help="skip the delivery runs"
    )
    parser.add_argument(
        "--no-formats",
        dest="formats",
        action="store_false",
        help="skip the jsonl, parquet and xlsx runs",
    )
    parser.add_argument(
        "--xlsx-up-to",
        type=int,
        default=None,
        metavar="ROWS",
        help="run xlsx only at sizes up to ROWS (to shorten a run)",
    )
    parser.add_argument("--keep-db", action="store_true", help=f"keep database {DB_NAME}")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    import_mb = bench_formats.import_rss_mb() if args.formats else None
    dsn = await _recreate_db()
    results = []
    try:
        users = await _seed(dsn, args.rows)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        assert pool is not None
        try:
            with tempfile.TemporaryDirectory(prefix="exporter-bench-") as tmp:
                for n in args.rows:
                    _note(f"benchmarking {n:,} rows")
                    results.append(
                        await bench_size(
                            dsn,
                            pool,
                            users[n],
                            n,
                            args.runs,
                            Path(tmp),
                            progress=args.progress,
                            formats=args.formats,
                            xlsx_up_to=args.xlsx_up_to,
                        )
                    )
            if args.delivery:
                async with delivery_target() as target:
                    for result in results:
                        _note(f"delivering {result['rows']:,} rows")
                        result |= await bench_delivery(
                            pool, users[result["rows"]], target, runs=3, progress=args.progress
                        )
        finally:
            await pool.close()
    finally:
        if not args.keep_db:
            await _drop_db()
    if not args.json:
        print(
            f"\n{time.strftime('%Y-%m-%d')} · {platform.node()} · {_cpu_model()} · "
            f"{os.cpu_count()} cores · Python {platform.python_version()} · "
            f"medians of {args.runs} alternating runs"
            + (" · with progress tracking" if args.progress else " · without progress")
        )
        header = (
            f"{'rows':>9} {'floor s':>8} {'ours s':>7} {'ratio':>6} {'gz floor':>9} "
            f"{'gz ours':>8} {'gz ratio':>8} {'gz size':>8} {'RSS +MB':>8} {'CPU s':>6}"
            + (f" {'delivery':>17} {'+MB':>5}" if args.delivery else "")
        )
        print(header)
        for r in results:
            print(
                f"{r['rows']:>9,} {r['floor_median_s']:>8.3f} {r['median_s']:>7.3f} "
                f"{r['ratio']:>6.2f} {r['gz_floor_median_s']:>9.3f} {r['gz_median_s']:>8.3f} "
                f"{r['gz_ratio']:>8.2f} {r['gz_size_ratio']:>8.2f} "
                f"{r['peak_rss_delta_mb']:>8.1f} {r['client_cpu_s']:>6.2f}"
                + (
                    f" {r['delivery']:>17} {r['delivery_rss_delta_mb']:>5.1f}"
                    if args.delivery
                    else ""
                )
            )
        if args.formats:
            _print_formats(results, import_mb)
    print(json.dumps(results))
    return 0


def _print_formats(results: list[dict[str, Any]], import_mb: float | None) -> None:
    print(
        "\nformats (ratio to the same run's floor; RSS growth after a warm-up run; "
        f"importing pyarrow once adds {import_mb} MB)"
    )
    print(
        f"{'rows':>9} {'format':>8} {'s':>8} {'ratio':>6} {'target':>6} {'MB':>7} "
        f"{'vs gz':>6} {'RSS +MB':>8} {'CPU s/M':>8}"
    )
    for r in results:
        for fmt in bench_formats.FORMATS:
            k = fmt.value
            if f"{k}_ratio" not in r:
                continue
            print(
                f"{r['rows']:>9,} {k:>8} {r[f'{k}_median_s']:>8.3f} {r[f'{k}_ratio']:>6.2f} "
                f"{bench_formats.TARGET_RATIO[fmt]:>6.1f} {r[f'{k}_mb']:>7.1f} "
                f"{r[f'{k}_size_vs_csv_gz']:>6.2f} {r[f'{k}_peak_rss_delta_mb']:>8.1f} "
                f"{r[f'{k}_client_cpu_s_per_million_rows']:>8.2f}"
            )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
