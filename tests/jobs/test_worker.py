"""Worker wiring: a health key per process for liveness probes, settings from Settings, and
the metrics a real arq worker records for the exports it runs, and the refusal to run on a
Redis that may evict the queue."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from arq import Retry
from arq.worker import Worker
from pydantic import SecretStr

from exporter.config import Settings
from exporter.dev.ports import free_port, port_open
from exporter.dev.smtp import SmtpSink
from exporter.errors import RedisNotDurable
from exporter.jobs.worker import (
    build_worker_settings,
    health_check_key,
    new_worker_id,
    run_export_task,
    worker_is_healthy,
)
from exporter.mail.smtp import Mailer
from exporter.metrics import sample_value
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, JobState, utcnow
from exporter.queue import RedisDurability, worker_liveness_key
from exporter.resources import Resources, open_resources
from tests.conftest import MakeUser, SeedRows
from tests.faults.stack import PrivateRedis
from tests.helpers import scraped


async def test_health_key_is_live_while_the_worker_runs_and_gone_after(
    settings: Settings,
) -> None:
    assert not await worker_is_healthy(settings)
    worker = Worker(**build_worker_settings(settings, handle_signals=False, poll_delay=0.05))
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(100):
            if await worker_is_healthy(settings):
                break
            await asyncio.sleep(0.05)
        assert await worker_is_healthy(settings)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    assert not await worker_is_healthy(settings)


async def test_each_worker_process_keeps_a_short_lived_liveness_key_until_it_stops(
    settings: Settings, resources: Resources
) -> None:
    quick = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"liveness_ttl_s": 3})}
    )
    worker = Worker(**build_worker_settings(quick, handle_signals=False, poll_delay=0.05))
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(200):
            if "worker_id" in worker.ctx:
                break
            await asyncio.sleep(0.05)
        worker_id = worker.ctx["worker_id"]
        key = worker_liveness_key(quick.redis.queue_name, worker_id)
        assert await resources.queue.worker_alive(worker_id)
        assert 0 < await resources.queue.redis.pttl(key) <= 3000  # lives seconds, not minutes
        await asyncio.sleep(4)  # longer than the key lives: refreshed every second
        assert await resources.queue.worker_alive(worker_id)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    assert not await resources.queue.worker_alive(worker_id)  # gone with the process


def test_two_worker_processes_on_one_host_have_different_ids() -> None:
    assert new_worker_id() != new_worker_id()


def test_worker_settings_follow_our_settings(settings: Settings) -> None:
    kwargs = build_worker_settings(settings)
    assert kwargs["queue_name"] == settings.redis.queue_name
    assert kwargs["max_jobs"] == settings.worker.max_jobs
    assert kwargs["job_completion_wait"] == settings.worker.shutdown_grace_s
    assert kwargs["allow_abort_jobs"] is True  # cancellation stops running exports
    assert kwargs["health_check_key"] == health_check_key(settings)
    assert health_check_key(settings).startswith(settings.redis.queue_name + ":health-check:")


SUCCEEDED = {"status": "succeeded", "reason": ""}


async def test_worker_serves_its_metrics_on_the_configured_port(
    settings: Settings, resources: Resources, make_user: MakeUser, seed_rows: SeedRows
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    job = await new_job(resources, user.user_id)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))
    succeeded_before = sample_value("exporter_exports_finished_total", SUCCEEDED)
    port = free_port()
    with_metrics = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"metrics_port": port})}
    )
    worker = Worker(
        **build_worker_settings(with_metrics, handle_signals=False, poll_delay=0.05, cron_jobs=[])
    )
    task = asyncio.create_task(worker.main())
    # The registry is per process, so earlier tests may have published gauges for their
    # own queues: wait for this queue's series, not for any queue's.
    this_queue = {"queue": settings.redis.queue_name}
    text = ""
    try:
        async with aiohttp.ClientSession() as http:
            # Polls until the export this worker ran and its first queue refresh show up;
            # generous, because start-up (pools, clients) and the refresh are slow on a
            # loaded 2-core CI machine.
            deadline = asyncio.get_running_loop().time() + 30
            while asyncio.get_running_loop().time() < deadline:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                        text = await response.text()
                finished = scraped(text, "exporter_exports_finished_total", SUCCEEDED)
                queued = scraped(text, "exporter_queue_jobs", this_queue)
                if finished == succeeded_before + 1 and queued is not None:
                    break
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    # The endpoint tells what this worker did (the export it finished) and what it read
    # from Redis (its own queue's gauges).
    assert scraped(text, "exporter_exports_finished_total", SUCCEEDED) == succeeded_before + 1
    assert scraped(text, "exporter_queue_jobs", this_queue) is not None
    assert not port_open(port)  # closed with the worker


async def test_transient_failure_is_counted_as_a_retry_with_its_reason(
    resources: Resources, make_user: MakeUser, seed_rows: SeedRows, settings: Settings
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 3)
    job = ExportJob.new(user_id=user.user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=60)
    await resources.jobs.create(job)
    dead_smtp = settings.smtp.model_copy(update={"port": free_port(), "timeout_s": 2})
    ctx = {
        "settings": settings,
        "resources": dataclasses.replace(resources, mailer=Mailer(dead_smtp)),
        "job_try": 1,
    }
    labels = {"reason": "smtp_unavailable"}
    before = sample_value("exporter_export_retries_total", labels)

    with pytest.raises(Retry):
        await run_export_task(ctx, ExportMessageV1(job.job_id, user.user_id).to_payload())

    assert sample_value("exporter_export_retries_total", labels) == before + 1


# --- what a real worker records for the exports it runs -------------------------------------


async def new_job(resources: Resources, user_id: str) -> ExportJob:
    job = ExportJob.new(user_id=user_id, fmt=ExportFormat.CSV, now=utcnow(), retention_s=600)
    await resources.jobs.create(job)
    return job


async def run_burst(settings: Settings) -> Worker:
    """A real arq worker built from ``settings``, run until its queue is empty. No crons: a
    sweep that fell due would add its own numbers to the ones these tests pin."""
    worker = Worker(
        **build_worker_settings(
            settings, burst=True, poll_delay=0, handle_signals=False, cron_jobs=[]
        )
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


def export_metrics(*, failed_reason: str) -> dict[str, float]:
    """The export metrics of the default registry as they stand now, by short name."""
    samples: dict[str, tuple[str, dict[str, str]]] = {
        "succeeded": ("exporter_exports_finished_total", SUCCEEDED),
        "failed": (
            "exporter_exports_finished_total",
            {"status": "failed", "reason": failed_reason},
        ),
        "duration_count{succeeded}": (
            "exporter_export_duration_seconds_count",
            {"status": "succeeded"},
        ),
        "duration_sum{succeeded}": (
            "exporter_export_duration_seconds_sum",
            {"status": "succeeded"},
        ),
        "duration_count{failed}": ("exporter_export_duration_seconds_count", {"status": "failed"}),
        "duration_sum{failed}": ("exporter_export_duration_seconds_sum", {"status": "failed"}),
        "rows_count": ("exporter_export_rows_count", {}),
        "rows_sum": ("exporter_export_rows_sum", {}),
        "bytes_count": ("exporter_export_size_bytes_count", {}),
        "bytes_sum": ("exporter_export_size_bytes_sum", {}),
        "email_count": ("exporter_email_send_duration_seconds_count", {}),
        "email_sum": ("exporter_email_send_duration_seconds_sum", {}),
        "email_failures": ("exporter_email_send_failures_total", {}),
        "notices{sent}": ("exporter_failure_notices_total", {"outcome": "sent"}),
        "notices{failed}": ("exporter_failure_notices_total", {"outcome": "failed"}),
        "notices{skipped}": ("exporter_failure_notices_total", {"outcome": "skipped"}),
    }
    return {key: sample_value(name, labels) for key, (name, labels) in samples.items()}


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The metrics that changed, by how much."""
    return {key: after[key] - before[key] for key in before if after[key] != before[key]}


async def test_a_delivered_export_moves_the_success_metrics_by_what_it_exported(
    settings: Settings,
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    smtp_sink: SmtpSink,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 7)
    job = await new_job(resources, user.user_id)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))
    before = export_metrics(failed_reason="")

    started = time.monotonic()
    worker = await run_burst(settings)
    elapsed = time.monotonic() - started

    assert worker.jobs_complete == 1
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED
    (message,) = smtp_sink.for_export(job.job_id)
    (part,) = list(message.iter_attachments())
    file = part.get_payload(decode=True)
    assert isinstance(file, bytes) and done.byte_size == len(file)

    delta = moved(before, export_metrics(failed_reason=""))
    # Times vary run to run, but they nest: the email inside the export inside the run.
    email_s, export_s = delta.pop("email_sum"), delta.pop("duration_sum{succeeded}")
    assert 0 < email_s < export_s <= elapsed
    assert delta == {
        "succeeded": 1,
        "duration_count{succeeded}": 1,
        "rows_count": 1,
        "rows_sum": 7,
        "bytes_count": 1,
        "bytes_sum": len(file),
        "email_count": 1,
    }


class RejectingData:
    """An SMTP server that takes the envelope and refuses every message for good."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "554 5.7.1 Message rejected"


@pytest.fixture(name="rejecting_smtp")
def _fix_rejecting_smtp() -> Iterator[Controller]:
    controller = Controller(RejectingData(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller
    controller.stop()


async def test_an_export_the_mail_server_rejects_is_kept_for_download_with_the_reason(
    settings: Settings,
    resources: Resources,
    make_user: MakeUser,
    seed_rows: SeedRows,
    rejecting_smtp: Controller,
) -> None:
    user = await make_user()
    await seed_rows(user.user_id, 7)
    job = await new_job(resources, user.user_id)
    await resources.queue.enqueue_export(ExportMessageV1(job.job_id, user.user_id))
    rejecting = settings.model_copy(
        update={"smtp": settings.smtp.model_copy(update={"port": rejecting_smtp.port})}
    )
    before = export_metrics(failed_reason="smtp_rejected")
    undelivered = {"status": "succeeded", "reason": "smtp_rejected"}
    undelivered_before = sample_value("exporter_exports_finished_total", undelivered)

    started = time.monotonic()
    await run_burst(rejecting)
    elapsed = time.monotonic() - started

    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED
    # 5xx: final at once, no retry; the file is stored, so the export is kept for download
    # and says why the email did not arrive.
    assert done.attempts == 1 and done.error_code is None
    assert done.delivery == "undelivered" and done.delivery_error_code == "smtp_rejected"
    assert done.file_key is not None and done.sha256 is not None and done.row_count == 7
    assert sample_value("exporter_exports_finished_total", undelivered) == undelivered_before + 1
    delta = moved(before, export_metrics(failed_reason="smtp_rejected"))
    email_s, export_s = delta.pop("email_sum"), delta.pop("duration_sum{succeeded}")
    assert 0 < email_s < export_s <= elapsed
    # Counted as a success of 7 rows; no failure notice (the same server would refuse it).
    assert delta == {
        "duration_count{succeeded}": 1,
        "rows_count": 1,
        "rows_sum": 7,
        "bytes_count": 1,
        "bytes_sum": done.byte_size,
        "email_count": 1,
        "email_failures": 1,
    }


# --- Redis must not evict the queue ----------------------------------------------------------

StartRedis = Callable[..., PrivateRedis]


@pytest.fixture(name="start_redis")
def _fix_start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """Private ``redis-server``s with the given options, killed at the end."""
    started: list[PrivateRedis] = []

    def start(*options: str) -> PrivateRedis:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        redis = PrivateRedis(workdir, *options)
        redis.start()
        started.append(redis)
        return redis

    yield start
    for redis in started:
        redis.kill()


def guarded(settings: Settings, redis: PrivateRedis, *, require: bool = True) -> Settings:
    """``settings`` on ``redis``, with the noeviction guard on (or off)."""
    config = settings.redis.model_copy(
        update={"url": SecretStr(redis.url), "require_noeviction": require}
    )
    return settings.model_copy(update={"redis": config})


async def test_a_worker_refuses_to_start_on_a_redis_that_evicts_keys(
    settings: Settings, start_redis: StartRedis
) -> None:
    evicting = guarded(settings, start_redis("--maxmemory-policy", "allkeys-lru"))
    worker = Worker(**build_worker_settings(evicting, handle_signals=False, cron_jobs=[]))

    try:
        with pytest.raises(RedisNotDurable, match=r"maxmemory-policy allkeys-lru.*noeviction"):
            await worker.main()
    finally:
        await worker.close()
    assert not await worker_is_healthy(evicting)  # it never polled


@pytest.mark.parametrize("aof", [False, True])
async def test_a_worker_starts_on_a_redis_that_never_evicts(
    settings: Settings, start_redis: StartRedis, aof: bool
) -> None:
    redis = start_redis("--maxmemory-policy", "noeviction", "--appendonly", "yes" if aof else "no")
    safe = guarded(settings, redis)
    async with open_resources(safe) as resources:
        assert await resources.queue.durability() == RedisDurability("noeviction", aof)
    worker = Worker(**build_worker_settings(safe, handle_signals=False, cron_jobs=[]))
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(100):
            if await worker_is_healthy(safe):
                break
            await asyncio.sleep(0.05)
        assert await worker_is_healthy(safe)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


async def test_without_the_guard_a_worker_runs_on_any_redis(
    settings: Settings, start_redis: StartRedis
) -> None:
    # Local and test Redis servers are plain ones: the guard is for deployed environments.
    assert Settings.model_construct().redis.require_noeviction is False
    anything = guarded(settings, start_redis("--maxmemory-policy", "allkeys-lru"), require=False)
    worker = Worker(
        **build_worker_settings(anything, handle_signals=False, cron_jobs=[], burst=True)
    )
    try:
        await worker.main()
    finally:
        await worker.close()


def test_the_large_pool_serves_its_own_queue_and_only_the_default_pool_runs_the_crons(
    settings: Settings,
) -> None:
    default = build_worker_settings(settings)
    large = build_worker_settings(settings, large=True)
    assert default["queue_name"] == settings.redis.queue_name
    assert large["queue_name"] == settings.redis.large_queue
    # One sweep and one expiry per tick: only the default pool schedules them (arq's unique
    # cron ids are global anyway; the large pool's slots may all be streaming for minutes).
    assert {c.name for c in default["cron_jobs"]} == {
        "sweep_jobs",
        "expire_jobs",
        "run_export_schedules",
    }
    assert large["cron_jobs"] == []
    assert large["health_check_key"] == health_check_key(settings, large=True)
    assert large["health_check_key"].startswith(f"{settings.redis.large_queue}:health-check:")
    assert large["ctx"]["large"] is True and default["ctx"]["large"] is False
