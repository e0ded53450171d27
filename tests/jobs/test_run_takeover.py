"""A run taken over by a newer attempt (the sweeper judged its worker dead and another
worker started the export again) must not deliver: only the newer attempt owns the job."""

from __future__ import annotations

import asyncio
import dataclasses
from email.message import Message
from typing import Any

import pytest

from exporter.delivery import storage
from exporter.dev.smtp import SmtpSink
from exporter.jobs import run as run_module
from exporter.mail.smtp import Mailer
from exporter.models import JobState
from exporter.resources import Resources
from tests.conftest import SeededJob
from tests.helpers import deliver, with_exports


class _HeldMailer(Mailer):
    """A mailer that, once asked to send, waits until released (the newer run is mid-send)."""

    def __init__(self, inner: Mailer) -> None:
        self._inner = inner
        self.sending = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def sender(self) -> str:
        return self._inner.sender

    async def send(self, message: Message, **kwargs: Any) -> None:
        self.sending.set()
        await self.release.wait()
        await self._inner.send(message, **kwargs)


async def test_a_run_taken_over_after_storing_its_file_does_not_deliver(
    resources: Resources,
    seeded_job: SeededJob,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, job = await seeded_job(5)
    held = _HeldMailer(resources.mailer)
    newer_resources = dataclasses.replace(resources, mailer=held)
    newer: list[asyncio.Task[Any]] = []
    real_store_file = storage.store_file
    # The sweeper takes a run over only once its heartbeat was quiet for three progress
    # intervals, so the run it took over last confirmed it owned the job longer ago than an
    # interval: it reads the record before it sends (the last look). Here the old run's
    # interval is short and it stalls for longer than that, as a run judged dead did.
    interval_s = 0.05
    old_resources = with_exports(resources, progress_interval_s=interval_s)

    async def store_then_taken_over(*args: Any, **kwargs: Any) -> Any:
        stored = await real_store_file(*args, **kwargs)
        if newer:
            return stored  # the newer attempt's own upload (same key): it goes on to send
        # The old run stalls here (its worker looked dead); the sweeper requeues the export
        # and a newer attempt starts (producing the file again: a delivered file's note is
        # written with the delivery's guard) and begins its send.
        newer.append(asyncio.create_task(deliver(newer_resources, job, user.user_id, attempt=2)))
        await asyncio.wait_for(held.sending.wait(), 30)
        await asyncio.sleep(2 * interval_s)
        return stored

    monkeypatch.setattr(run_module, "store_file", store_then_taken_over)
    try:
        assert await deliver(old_resources, job, user.user_id, attempt=1) is None
    finally:
        held.release.set()
    monkeypatch.setattr(run_module, "store_file", real_store_file)
    (task,) = newer
    outcome = await asyncio.wait_for(task, 30)

    # One email: the run that no longer owned the export sent none.
    assert len(smtp_sink.for_export(job.job_id)) == 1
    done = await resources.jobs.get(job.job_id)
    assert done is not None and done.status is JobState.SUCCEEDED and done.attempts == 2
    assert outcome is not None and outcome.status is JobState.SUCCEEDED
