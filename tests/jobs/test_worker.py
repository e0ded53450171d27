"""Worker wiring: a health key per process for liveness probes, settings from Settings."""

from __future__ import annotations

import asyncio
import contextlib

from arq.worker import Worker

from exporter.config import Settings
from exporter.jobs.worker import build_worker_settings, health_check_key, worker_is_healthy


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
    assert kwargs["health_check_key"] == health_check_key(settings)
    assert health_check_key(settings).startswith(settings.redis.queue_name + ":health-check:")
