"""What one create costs: DynamoDB calls and this process's CPU per ``create_export``, and
where that CPU goes (cProfile), against DynamoDB Local, PostgreSQL and Redis on loopback.

    python -m bench.create_cost --creates 300 [--profile 25]

The use case alone (no HTTP, no JWT): the API adds its request handling on top. CPU is
``time.process_time`` over the creates divided by their number, so on a busy machine it is
indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import secrets
import time
import uuid

from prometheus_client import REGISTRY
from pydantic import SecretStr

from exporter.aws import open_dynamo
from exporter.config import DynamoSettings, PostgresSettings, RedisSettings, Settings
from exporter.dev.dynamodb import ensure_dynamodb_local, start_dynamodb
from exporter.exports.create import Created, ExportRequest, create_export
from exporter.resources import open_resources
from exporter.store.tables import create_tables


def dynamodb_calls() -> dict[str, float]:
    """The calls counted so far (``exporter_dynamodb_calls_total``; empty on a version
    without the counter, so the script also profiles older code)."""
    return {
        sample.labels["operation"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "exporter_dynamodb_calls"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


async def run(creates: int, profile_top: int, pg_dsn: str) -> None:
    ensure_dynamodb_local()
    local = start_dynamodb()
    try:
        run_id = secrets.token_hex(4)
        settings = Settings(
            postgres=PostgresSettings(dsn=SecretStr(pg_dsn)),
            redis=RedisSettings(queue_name=f"bench-create:{run_id}"),
            dynamo=DynamoSettings(endpoint_url=local.endpoint_url, table_prefix=f"b{run_id}-"),
        )
        async with open_dynamo(settings.dynamo) as client:
            await create_tables(client, settings.dynamo)
        async with open_resources(settings) as resources:
            users = [str(uuid.uuid4()) for _ in range(creates)]
            # Warm up: connections, botocore's models and caches.
            for user in users[:20]:
                await create_export(resources, user, ExportRequest())
            users = users[20:]
            half = len(users) // 2
            # First half unprofiled: the CPU figure; second half under cProfile, timed by
            # CPU (process_time), not wall clock, so waiting on a busy machine is left out.
            calls_before = dynamodb_calls()
            cpu, wall = time.process_time(), time.perf_counter()
            for user in users[:half]:
                result = await create_export(resources, user, ExportRequest())
                assert isinstance(result, Created)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            calls_after = dynamodb_calls()
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            for user in users[half:]:
                await create_export(resources, user, ExportRequest())
            profiler.disable()
            await resources.queue.redis.delete(settings.redis.queue_name)
        calls = {k: v - calls_before.get(k, 0) for k, v in calls_after.items()}
        calls = {k: v for k, v in calls.items() if v}
        n = half
        print(f"creates: {n} timed, {len(users) - half} profiled")
        print(f"CPU per create: {cpu / n * 1000:.2f} ms")
        print(f"wall per create: {wall / n * 1000:.2f} ms")
        print("DynamoDB calls per create:", {k: round(v / n, 2) for k, v in calls.items()})
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
        stats.print_stats(profile_top)
        print(out.getvalue())
    finally:
        local.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=300)
    parser.add_argument("--profile", type=int, default=25, help="rows of the profile")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/exporter")
    args = parser.parse_args()
    asyncio.run(run(args.creates, args.profile, args.pg_dsn))


if __name__ == "__main__":
    main()
