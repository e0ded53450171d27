"""Worker wiring: a health key per process for liveness probes, settings from Settings, and
the refusal to run on a Redis that may evict the queue."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from arq import Retry
from arq.worker import Worker
from pydantic import SecretStr

from exporter.config import Settings
from exporter.dev.ports import free_port, port_open
from exporter.jobs.worker import (
    build_worker_settings,
    health_check_key,
    run_export_task,
    worker_is_healthy,
)
from exporter.mail import Mailer
from exporter.metrics import sample_value
from exporter.models import ExportFormat, ExportJob, ExportMessageV1, utcnow
from exporter.queue import RedisDurability, RedisNotDurable
from exporter.resources import Resources, open_resources
from tests.conftest import MakeUser, SeedRows
from tests.faults.stack import PrivateRedis


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


def test_worker_settings_follow_our_settings(settings: Settings) -> None:
    kwargs = build_worker_settings(settings)
    assert kwargs["queue_name"] == settings.redis.queue_name
    assert kwargs["max_jobs"] == settings.worker.max_jobs
    assert kwargs["job_completion_wait"] == settings.worker.shutdown_grace_s
    assert kwargs["allow_abort_jobs"] is True  # cancellation stops running exports
    assert kwargs["health_check_key"] == health_check_key(settings)
    assert health_check_key(settings).startswith(settings.redis.queue_name + ":health-check:")


async def test_worker_serves_its_metrics_on_the_configured_port(settings: Settings) -> None:
    port = free_port()
    with_metrics = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"metrics_port": port})}
    )
    worker = Worker(**build_worker_settings(with_metrics, handle_signals=False, poll_delay=0.05))
    task = asyncio.create_task(worker.main())
    # The registry is per process, so earlier tests may have published gauges for their
    # own queues: wait for this queue's series, not for any queue's.
    this_queue = f'exporter_queue_jobs{{queue="{settings.redis.queue_name}"}}'
    text = ""
    try:
        async with aiohttp.ClientSession() as http:
            # Polls until the first queue refresh shows up; generous, because start-up
            # (pools, clients) and the refresh are slow on a loaded 2-core CI machine.
            deadline = asyncio.get_running_loop().time() + 30
            while asyncio.get_running_loop().time() < deadline:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                        text = await response.text()
                if this_queue in text:
                    break
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    assert this_queue in text
    assert "exporter_export_duration_seconds_bucket" in text
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
