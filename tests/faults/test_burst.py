"""The burst: 500 create requests from 100 users arriving over ~20 s while the only worker
is killed (``kill -9``) and restarted twice, both kills and both restarts falling inside the
arrivals. Every accepted export must end in exactly one final state with its email, none
twice, and no user may ever have two active exports: a sampler reads the live jobs while
the requests arrive. The counts and timestamps are printed and kept in
test-artifacts/burst.json (docs/reliability.md quotes a run)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.config import Settings
from exporter.mail.messages import EXPORT_ID_HEADER
from exporter.models import ExportJob, JobState, User
from exporter.resources import Resources
from exporter.store.seed import seed_memberships
from exporter.store.tables import ACTIVE_INDEX
from tests.faults.conftest import Api, MakeUsers
from tests.faults.stack import FaultySmtp, Processes, kill_hard, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

USERS = 100
REQUESTS = 500
ROWS_PER_USER = 3
MAX_JOBS = 8
# Open-loop arrivals, one request every 45 ms (~22/s, ~20 s in all), whatever the answers.
ARRIVAL_GAP_S = 0.045
# The last requests keep arriving until the second restarted worker is up, so that both
# crashes and both restarts always fall inside the arrivals: if the crashes are not done
# when they are due (a restart takes 2-8 s on a loaded 2-core machine), they trickle in one
# every 0.25 s meanwhile, and the final few are sent only after the second restart.
HELD_BACK = 50
TRICKLE_GAP_S = 0.25
FINAL = 10
# A worker is killed once it has been up this long and has sent this many emails since:
# in the middle of its work. A random extra moment keeps the kill from being aimed at the
# instant right after a send (the one window in docs/reliability.md).
MIN_UPTIME_S = 2.5
MIN_EMAILS = 10
# How often the sampler reads the live jobs (plus the read's own time).
SAMPLE_EVERY_S = 0.1


@dataclass
class Arrival:
    sent_s: float
    answered_s: float
    status: int
    body: dict[str, Any]


@dataclass
class Sampler:
    """Reads every live job of the test's users, again and again, while the burst runs."""

    resources: Resources
    user_ids: set[str]
    clock: Any
    samples: list[tuple[float, int]] = field(default_factory=list)  # (at, most per user)
    violations: list[dict[str, Any]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            at = self.clock()
            per_user = Counter(job["user_id"] for job in await self._live())
            most = max(per_user.values(), default=0)
            self.samples.append((round(at, 3), most))
            if most > 1:
                self.violations.append(
                    {"at_s": round(at, 3), "users": [u for u, n in per_user.items() if n > 1]}
                )
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def _live(self) -> list[dict[str, str]]:
        # One Scan request of the sparse active index (queued and in_progress together):
        # one moment per sample. Two separate reads (queued, then in_progress) could see a
        # job finish and the same user's next one start in between, a false alarm.
        live: list[dict[str, str]] = []
        query: dict[str, Any] = {
            "TableName": self.resources.settings.dynamo.jobs_table,
            "IndexName": ACTIVE_INDEX,
            "ProjectionExpression": "job_id, user_id",
        }
        while True:
            page = await self.resources.dynamo.scan(**query)
            for item in page.get("Items", []):
                if item["user_id"]["S"] in self.user_ids:
                    live.append({"job_id": item["job_id"]["S"], "user_id": item["user_id"]["S"]})
            if "LastEvaluatedKey" not in page:
                return live
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def most_during(self, start_s: float, end_s: float) -> tuple[int, int]:
        """(samples taken, most active exports of one user) between the two moments."""
        inside = [most for at, most in self.samples if start_s <= at <= end_s]
        return len(inside), max(inside, default=0)


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
    test_started = time.monotonic()
    users = await make_users(USERS)
    for user in users:
        await seed_memberships(pg, user.user_id, ROWS_PER_USER)
    await procs.start_api()
    api.base = procs.api_url
    worker = await start_worker(procs)
    requests = [users[i % USERS] for i in range(REQUESTS)]
    random.shuffle(requests)
    started = time.monotonic()

    def clock() -> float:
        return time.monotonic() - started

    def emails() -> int:
        return len(list(faulty_smtp.outbox.glob("*.eml")))

    kills: list[float] = []
    restarts: list[float] = []
    ready: list[float] = [0.0]  # the first worker was up before the first request

    async def crash_twice() -> None:
        nonlocal worker
        for _ in range(2):
            up_since, emails_before = ready[-1], emails()

            async def busy(up_since: float = up_since, before: int = emails_before) -> bool:
                return clock() >= up_since + MIN_UPTIME_S and emails() - before >= MIN_EMAILS

            await wait_until(busy, timeout_s=60, every_s=0.05)
            await asyncio.sleep(random.uniform(0, 0.3))
            kill_hard(worker)
            kills.append(clock())
            worker = procs.start_worker(EXPORTER_WORKER__MAX_JOBS=str(MAX_JOBS))
            restarts.append(clock())
            await wait_for_ready(procs, worker)
            ready.append(clock())

    async def send(user: User) -> Arrival:
        sent = clock()
        status, body = await api.create(user)
        return Arrival(sent, clock(), status, body)

    sampler = Sampler(resources, {u.user_id for u in users}, clock)
    sampling = asyncio.create_task(sampler.run())
    crasher = asyncio.create_task(crash_twice())
    sending: list[asyncio.Task[Arrival]] = []
    pending = list(requests)
    while len(pending) > HELD_BACK:
        await asyncio.sleep(max(0.0, len(sending) * ARRIVAL_GAP_S - clock()))
        sending.append(asyncio.create_task(send(pending.pop())))
    held_from = clock()
    while len(pending) > FINAL and not crasher.done():
        sending.append(asyncio.create_task(send(pending.pop())))
        await asyncio.wait({crasher}, timeout=TRICKLE_GAP_S)
    await asyncio.wait_for(asyncio.shield(crasher), 120)
    held_s = clock() - held_from
    while pending:
        sending.append(asyncio.create_task(send(pending.pop())))
        await asyncio.sleep(ARRIVAL_GAP_S)
    arrivals = await asyncio.gather(*sending)
    first_sent = min(a.sent_s for a in arrivals)
    last_sent = max(a.sent_s for a in arrivals)
    answered_s = max(a.answered_s for a in arrivals)
    statuses = Counter(a.status for a in arrivals)
    accepted = {a.body["id"]: a.body for a in arrivals if a.status == 202}
    assert set(statuses) <= {200, 202}, statuses
    assert accepted

    async def all_final() -> bool:
        live = [job async for state in _states() async for job in resources.jobs.active(state)]
        return not any(job.job_id in accepted for job in live)

    await wait_until(all_final, timeout_s=300, every_s=0.5)
    drained_s = clock()
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)

    jobs = await _records(resources, list(accepted))
    outcome = Counter(job.status.value for job in jobs.values())
    export_emails = Counter(
        m[EXPORT_ID_HEADER] for m in faulty_smtp.messages() if list(m.iter_attachments())
    )
    succeeded = {i for i, job in jobs.items() if job.status is JobState.SUCCEEDED}
    missing = sorted(i for i in succeeded if export_emails[i] == 0)
    duplicated = {i: n for i, n in export_emails.items() if i in accepted and n > 1}
    duplicates = sum(n - 1 for n in duplicated.values())
    samples_arriving, most_arriving = sampler.most_during(first_sent, last_sent)
    sent_between = [
        sum(1 for a in arrivals if lo < a.sent_s < hi)
        for lo, hi in (
            (-1.0, kills[0]),
            (kills[0], ready[1]),
            (ready[1], kills[1]),
            (kills[1], ready[2]),
            (ready[2], last_sent + 1),
        )
    ]
    report = {
        "run_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 1),
            "platform": platform.platform(),
        },
        "requests": REQUESTS,
        "users": USERS,
        "responses": dict(sorted(statuses.items())),
        "accepted": len(accepted),
        "succeeded": outcome["succeeded"],
        "failed": outcome["failed"],
        "other": len(accepted) - outcome["succeeded"] - outcome["failed"],
        "emails_missing": len(missing),
        "duplicate_emails": duplicates,
        "attempts_of_duplicated_exports": sorted(jobs[i].attempts for i in duplicated),
        "retried_runs": sum(job.attempts - 1 for job in jobs.values()),
        "most_active_exports_per_user": max((most for _, most in sampler.samples), default=0),
        "invariant_samples": len(sampler.samples),
        "invariant_samples_while_requests_arrived": samples_arriving,
        "most_active_exports_per_user_while_requests_arrived": most_arriving,
        "first_request_sent_s": round(first_sent, 2),
        "worker_kills_at_s": [round(t, 2) for t in kills],
        "worker_restarts_at_s": [round(t, 2) for t in restarts],
        "restarted_workers_ready_at_s": [round(t, 2) for t in ready[1:]],
        "last_request_sent_s": round(last_sent, 2),
        "requests_sent_before_kill_1_down_up_before_kill_2_down_up_after": sent_between,
        "held_back_requests_waited_for_restarts_s": round(held_s, 2),
        "requests_done_s": round(answered_s, 2),
        "all_final_s": round(drained_s, 2),
        "test_s": round(time.monotonic() - test_started, 1),
        "worker_max_jobs": MAX_JOBS,
    }
    (artifacts / "burst.json").write_text(json.dumps(report, indent=2) + "\n")
    with capsys.disabled():
        print("\nburst:", json.dumps(report))  # noqa: T201 - the counts the issue asks for

    # Both crashes and both restarts happened while requests were still arriving.
    assert first_sent < kills[0] < ready[1] < kills[1] < ready[2] < last_sent, report
    assert all(n > 0 for n in sent_between), report
    # No user ever had two active exports, sampled throughout the arrivals.
    assert sampler.violations == [], sampler.violations[:5]
    assert samples_arriving >= 20, report
    assert most_arriving == 1, report  # the sampler saw live exports, one per user at most
    assert all(job.status.is_terminal for job in jobs.values())
    assert outcome["succeeded"] == len(accepted), report
    assert missing == []
    # A kill -9 after the SMTP server accepted a message and before the worker wrote
    # email_sent_at is the one window docs/reliability.md documents: the re-run cannot know
    # the email went out. Each crash can land there for a job it interrupts; a duplicate
    # without a crash would be a bug (the other fault tests demand exactly one email).
    assert duplicates <= len(kills), report
    assert all(jobs[i].attempts >= 2 for i in duplicated), report  # each one was re-run


async def start_worker(procs: Processes) -> subprocess.Popen[bytes]:
    worker = procs.start_worker(EXPORTER_WORKER__MAX_JOBS=str(MAX_JOBS))
    await wait_for_ready(procs, worker)
    return worker


async def wait_for_ready(procs: Processes, worker: subprocess.Popen[bytes]) -> None:
    """Until the worker logged that its clients are open and it takes jobs."""
    log = procs.log_of(worker)

    async def up() -> bool:
        return '"worker.ready"' in log.read_text()

    await wait_until(up, timeout_s=60, every_s=0.05)


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
