"""Metric helpers and the queue reader, against a real Redis queue."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix

from exporter.jobs.metrics_server import serve_worker_metrics
from exporter.metrics import (
    observe_email,
    observe_export_finished,
    observe_export_retry,
    refresh_queue_metrics,
    sample_value,
)
from exporter.queue import queue_snapshot
from exporter.resources import Resources


def test_finished_export_counts_by_status_and_reason_and_observes_its_size() -> None:
    before_ok = sample_value(
        "exporter_exports_finished_total", {"status": "succeeded", "reason": ""}
    )
    before_rows = sample_value("exporter_export_rows_sum")
    before_bytes = sample_value("exporter_export_size_bytes_count")
    before_dur = sample_value("exporter_export_duration_seconds_count", {"status": "succeeded"})

    observe_export_finished("succeeded", duration_s=0.4, rows=1000, size_bytes=150_000)

    assert (
        sample_value("exporter_exports_finished_total", {"status": "succeeded", "reason": ""})
        == before_ok + 1
    )
    assert sample_value("exporter_export_rows_sum") == before_rows + 1000
    assert sample_value("exporter_export_size_bytes_count") == before_bytes + 1
    assert (
        sample_value("exporter_export_duration_seconds_count", {"status": "succeeded"})
        == before_dur + 1
    )


def test_failed_export_counts_its_reason_and_no_size() -> None:
    labels = {"status": "failed", "reason": "too_large"}
    before = sample_value("exporter_exports_finished_total", labels)
    before_bytes = sample_value("exporter_export_size_bytes_count")

    observe_export_finished("failed", "too_large", duration_s=1.5, rows=10, size_bytes=99)

    assert sample_value("exporter_exports_finished_total", labels) == before + 1
    assert sample_value("exporter_export_size_bytes_count") == before_bytes
    assert sample_value(
        "exporter_export_duration_seconds_bucket", {"status": "failed", "le": "+Inf"}
    )


def test_email_sends_are_timed_and_failures_counted() -> None:
    sends = sample_value("exporter_email_send_duration_seconds_count")
    failures = sample_value("exporter_email_send_failures_total")

    observe_email(0.02, ok=True)
    observe_email(2.0, ok=False)

    assert sample_value("exporter_email_send_duration_seconds_count") == sends + 2
    assert sample_value("exporter_email_send_failures_total") == failures + 1


def test_retries_are_counted_by_reason() -> None:
    before = sample_value("exporter_export_retries_total", {"reason": "smtp_unavailable"})
    observe_export_retry("smtp_unavailable")
    assert sample_value("exporter_export_retries_total", {"reason": "smtp_unavailable"}) == (
        before + 1
    )


async def _enqueue(resources: Resources, *, defer_by_s: float | None = None) -> str:
    job_id = str(uuid.uuid4())
    job = await resources.queue.redis.enqueue_job(
        "noop",
        _job_id=job_id,
        _queue_name=resources.settings.redis.queue_name,
        _defer_by=defer_by_s,
    )
    assert job is not None
    return job_id


async def test_queue_snapshot_tells_ready_running_and_deferred_apart(
    resources: Resources,
) -> None:
    redis, queue = resources.queue.redis, resources.settings.redis.queue_name
    empty = await queue_snapshot(redis, queue)
    assert (empty.jobs, empty.ready, empty.in_progress, empty.oldest_ready_age_s) == (0, 0, 0, 0)

    running = await _enqueue(resources)
    waiting = await _enqueue(resources)
    later = await _enqueue(resources, defer_by_s=600)
    await redis.psetex(in_progress_key_prefix + running, 60_000, b"1")
    try:
        # Seen five seconds from now, the waiting job is about five seconds old.
        snap = await queue_snapshot(redis, queue, now_ms=int(time.time() * 1000) + 5000)
    finally:
        await redis.delete(
            *(
                f"{p}{j}"
                for j in (running, waiting, later)
                for p in (in_progress_key_prefix, job_key_prefix)
            )
        )

    assert snap.jobs == 3
    assert snap.in_progress == 1
    assert snap.ready == 1
    assert snap.deferred == 1
    assert 4.5 < snap.oldest_ready_age_s < 10


async def test_queue_snapshot_counts_past_its_scan_limit(resources: Resources) -> None:
    redis, queue = resources.queue.redis, resources.settings.redis.queue_name
    ids = [await _enqueue(resources) for _ in range(5)]
    try:
        snap = await queue_snapshot(redis, queue, limit=2)
    finally:
        await redis.delete(*(job_key_prefix + j for j in ids))
    assert (snap.jobs, snap.ready, snap.in_progress) == (5, 5, 0)


async def test_refresh_sets_the_queue_gauges(resources: Resources) -> None:
    queue = resources.settings.redis.queue_name
    job_id = await _enqueue(resources)
    await resources.queue.count_operator_cancellation()  # as `exporter jobs cancel` does
    try:
        await refresh_queue_metrics(resources.queue.redis, queue)
    finally:
        await resources.queue.redis.delete(job_key_prefix + job_id)
    assert sample_value("exporter_queue_ready_jobs", {"queue": queue}) == 1
    assert sample_value("exporter_queue_jobs", {"queue": queue}) == 1
    assert sample_value("exporter_queue_oldest_ready_age_seconds", {"queue": queue}) >= 0
    assert sample_value("exporter_operator_cancellations_total", {"queue": queue}) == 1


@pytest.mark.timeout(30)
async def test_worker_metrics_server_serves_and_stops(resources: Resources) -> None:
    queue = resources.settings.redis.queue_name
    job_id = await _enqueue(resources)
    async with (
        serve_worker_metrics(
            resources.queue.redis, queue, host="127.0.0.1", port=0, refresh_s=0.05
        ) as port,
        aiohttp.ClientSession() as http,
    ):
        text = ""
        for _ in range(50):
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            if f'exporter_queue_ready_jobs{{queue="{queue}"}} 1.0' in text:
                break
            await asyncio.sleep(0.05)
    await resources.queue.redis.delete(job_key_prefix + job_id)
    assert f'exporter_queue_ready_jobs{{queue="{queue}"}} 1.0' in text
    # The Redis-held counter comes from its own collector; the worker's endpoint serves it.
    assert f'exporter_operator_cancellations_total{{queue="{queue}"}} 0.0' in text
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/metrics")
