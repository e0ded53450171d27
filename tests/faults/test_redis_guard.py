"""The worker process on a Redis that could drop the queue: it refuses to start, in one
plain sentence, when Redis evicts keys; it starts, with a warning, when Redis only lacks
AOF (ElastiCache on Redis 7 has none)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.stack import PrivateRedis, Processes, wait_until

pytestmark = pytest.mark.faults


@pytest.fixture(name="redis_dir")
def _fix_redis_dir(tmp_path: Path) -> Path:
    path = tmp_path / "redis"
    path.mkdir()
    return path


@pytest.fixture(name="evicting_redis")
def _fix_evicting_redis(redis_dir: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(redis_dir, "--maxmemory-policy", "allkeys-lru")
    redis.start()
    yield redis
    redis.kill()


@pytest.fixture(name="redis_without_aof")
def _fix_redis_without_aof(redis_dir: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(redis_dir, "--maxmemory-policy", "noeviction", "--appendonly", "no")
    redis.start()
    yield redis
    redis.kill()


def guarded_worker(procs: Processes, redis: PrivateRedis) -> subprocess.Popen[bytes]:
    return procs.start_worker(
        EXPORTER_REDIS__URL=redis.url, EXPORTER_REDIS__REQUIRE_NOEVICTION="true"
    )


async def test_the_worker_will_not_run_on_a_redis_that_evicts_keys(
    procs: Processes, evicting_redis: PrivateRedis
) -> None:
    worker = guarded_worker(procs, evicting_redis)

    assert worker.wait(timeout=60) == 2
    output = procs.log_of(worker).read_text()
    assert "exporter: refusing to start the worker: Redis evicts keys" in output
    assert "maxmemory-policy allkeys-lru" in output
    assert "Traceback" not in output  # a sentence, not a crash


async def test_the_worker_runs_on_noeviction_and_warns_that_aof_is_off(
    procs: Processes, redis_without_aof: PrivateRedis
) -> None:
    worker = guarded_worker(procs, redis_without_aof)
    log = procs.log_of(worker)

    async def warned() -> bool:
        return "worker.redis_without_aof" in log.read_text()

    await wait_until(warned, timeout_s=60)
    (line,) = [
        json.loads(line) for line in log.read_text().splitlines() if "redis_without_aof" in line
    ]
    assert line["level"] == "warning" and line["maxmemory_policy"] == "noeviction"
    assert worker.poll() is None  # still running: AOF is advice, eviction is a refusal
