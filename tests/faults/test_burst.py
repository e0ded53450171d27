"""The burst: 500 create requests from 100 users at once while the only worker is killed
(``kill -9``) and restarted twice. Every accepted export must end in exactly one final state
with its email, none twice. The counts are printed and kept in test-artifacts/burst.json
(docs/reliability.md quotes a run)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.config import Settings
from exporter.jobs.worker import worker_is_healthy
from exporter.mail import EXPORT_ID_HEADER
from exporter.models import ExportJob, JobState
from exporter.resources import Resources
from exporter.store.seed import seed_memberships
from tests.faults.conftest import Api, MakeUsers
from tests.faults.stack import FaultySmtp, Processes, kill_hard, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

USERS = 100
REQUESTS = 500
ROWS_PER_USER = 3
MAX_JOBS = 8
# One active export per user (issue #5, part 5): a user's create while one of theirs is
# queued or running answers 200 with that job, so a user may never have two active.


@pytest.mark.timeout(420)
async def test_a_burst_through_two_worker_crashes_loses_and_duplicates_nothing(
    procs: Processes,
    api: Api,
    resources: Resources,
    make_users: MakeUsers,
    faulty_smtp: FaultySmtp,
    fault_settings: Settings,
    pg: asyncpg.Connection[Any],
    artifacts: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    users = await make_users(USERS)
    for user in users:
        await seed_memberships(pg, user.user_id, ROWS_PER_USER)
    await procs.start_api()
    api.base = procs.api_url
    worker = procs.start_worker(EXPORTER_WORKER__MAX_JOBS=str(MAX_JOBS))

    async def worker_up() -> bool:
        return await worker_is_healthy(fault_settings)

    await wait_until(worker_up, timeout_s=60)  # so the crashes come while requests arrive
    requests = [users[i % USERS] for i in range(REQUESTS)]
    random.shuffle(requests)
    started = time.monotonic()

    def emails() -> int:
        return len(list(faulty_smtp.outbox.glob("*.eml")))

    async def crash_twice() -> list[float]:
        """kill -9 each worker once it has sent 30 exports, plus a random moment: in the
        middle of its work, but not aimed at the instant right after a send (the one
        window in docs/reliability.md), which counting emails alone would do."""
        nonlocal worker
        kills = []
        for _ in range(2):
            before = emails()

            async def busy(before: int = before) -> bool:
                return emails() - before >= 30

            await wait_until(busy, timeout_s=120, every_s=0.05)
            await asyncio.sleep(random.uniform(0, 0.3))
            kill_hard(worker)
            kills.append(round(time.monotonic() - started, 1))
            worker = procs.start_worker(EXPORTER_WORKER__MAX_JOBS=str(MAX_JOBS))
        return kills

    crasher = asyncio.create_task(crash_twice())
    responses = await asyncio.gather(*(api.create(user) for user in requests))
    created_s = time.monotonic() - started
    statuses = Counter(status for status, _ in responses)
    accepted = {body["id"]: body for status, body in responses if status == 202}
    assert set(statuses) <= {200, 202}, statuses
    assert accepted

    most_active_per_user = 0
    while True:
        # A job moving from queued to in_progress between the two reads shows up in both.
        active = {
            job.job_id: job
            async for state in _states()
            async for job in resources.jobs.active(state)
            if job.job_id in accepted
        }
        per_user = Counter(job.user_id for job in active.values())
        most_active_per_user = max(most_active_per_user, *per_user.values(), 0)
        if not active and crasher.done():
            break
        assert time.monotonic() - started < 360, f"{len(active)} exports still active"
        await asyncio.sleep(0.5)
    kills = await crasher
    drained_s = time.monotonic() - started

    jobs = await _records(resources, list(accepted))
    outcome = Counter(job.status.value for job in jobs.values())
    export_emails = Counter(
        m[EXPORT_ID_HEADER] for m in faulty_smtp.messages() if list(m.iter_attachments())
    )
    succeeded = {i for i, job in jobs.items() if job.status is JobState.SUCCEEDED}
    missing = sorted(i for i in succeeded if export_emails[i] == 0)
    duplicates = sum(n - 1 for i, n in export_emails.items() if i in accepted and n > 1)
    report = {
        "requests": REQUESTS,
        "users": USERS,
        "responses": dict(sorted(statuses.items())),
        "accepted": len(accepted),
        "succeeded": outcome["succeeded"],
        "failed": outcome["failed"],
        "other": len(accepted) - outcome["succeeded"] - outcome["failed"],
        "emails_missing": len(missing),
        "duplicate_emails": duplicates,
        "retried_runs": sum(job.attempts - 1 for job in jobs.values()),
        "most_active_exports_per_user": most_active_per_user,
        "worker_kills_at_s": kills,
        "requests_done_s": round(created_s, 1),
        "all_final_s": round(drained_s, 1),
        "worker_max_jobs": MAX_JOBS,
    }
    (artifacts / "burst.json").write_text(json.dumps(report, indent=2) + "\n")
    with capsys.disabled():
        print("\nburst:", json.dumps(report))  # noqa: T201 - the counts the issue asks for

    assert all(job.status.is_terminal for job in jobs.values())
    assert outcome["succeeded"] == len(accepted), report
    assert missing == []
    # A kill -9 after the SMTP server accepted a message and before the worker wrote
    # email_sent_at is the one window docs/reliability.md documents: the re-run cannot know
    # the email went out. Each crash can land there for a job it interrupts; a duplicate
    # without a crash would be a bug (the other fault tests demand exactly one email).
    assert duplicates <= len(kills), report
    assert most_active_per_user <= 1


async def _states() -> Any:
    for state in (JobState.QUEUED, JobState.IN_PROGRESS):
        yield state


async def _records(resources: Resources, ids: list[str]) -> dict[str, ExportJob]:
    found: dict[str, ExportJob] = {}
    for start in range(0, len(ids), 50):
        batch = await asyncio.gather(*(resources.jobs.get(i) for i in ids[start : start + 50]))
        found.update({job.job_id: job for job in batch if job is not None})
    assert len(found) == len(ids)
    return found
