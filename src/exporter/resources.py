"""Every long-lived client, opened once per process and closed once, for API and worker alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from exporter.auth import TokenService, build_token_service
from exporter.aws import open_dynamo, open_s3
from exporter.config import PostgresSettings, Settings
from exporter.dynamodb import DynamoDB
from exporter.errors import StoreError
from exporter.mail.smtp import Mailer
from exporter.models import ExportJob
from exporter.queue import ExportQueue, open_arq_redis
from exporter.regions import file_region
from exporter.store.files import ExportFiles
from exporter.store.idempotency import IdempotencyStore
from exporter.store.jobs import JobStore, derive_cursor_key
from exporter.store.memberships import EXPORT_DATESTYLE
from exporter.store.regions import RegionFlagStore
from exporter.store.schedules import ScheduleStore
from exporter.store.users import UserStore


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    pg: asyncpg.Pool[Any]
    # Export reads go to the replica when one is configured (in workers); ``pg`` otherwise.
    pg_export: asyncpg.Pool[Any]
    queue: ExportQueue
    dynamo: DynamoDB
    jobs: JobStore
    users: UserStore
    mailer: Mailer
    idempotency: IdempotencyStore
    files: ExportFiles
    # Signs download links (the worker's emails); the API verifies with its own app[TOKENS].
    tokens: TokenService
    schedules: ScheduleStore
    # Two regions (regions.py): the failed-region flags, and the other regions' export
    # buckets (s3.region_buckets), each with a client for its own region.
    region_flags: RegionFlagStore | None = None
    region_files: Mapping[str, ExportFiles] = field(default_factory=dict)

    def files_for(self, job: ExportJob) -> ExportFiles:
        """The bucket that holds ``job``'s file: this region's, or the one its record names
        (a file stored by the other region stays there; links sign for that bucket)."""
        region = file_region(job.file_region, here=self.settings.region)
        if region is None:
            return self.files
        files = self.region_files.get(region)
        if files is None:
            raise StoreError(f"no export bucket configured for region {region}")
        return files


async def open_pg_pool(
    settings: PostgresSettings, dsn: str, *, min_size: int | None = None
) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.pool_min_size if min_size is None else min_size,
        max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_s,
        command_timeout=settings.command_timeout_s,
        # What an export's COPY renders dates with (``copy_memberships`` sets it for any
        # other connection): set once per connection, not once per export.
        server_settings={"DateStyle": EXPORT_DATESTYLE},
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def open_resources(
    settings: Settings, *, pg_min_size: int | None = None, export_reads: bool = True
) -> AsyncIterator[Resources]:
    """Open every client; close all of them, in reverse order, however the block ends.

    ``export_reads=False`` (the API, the ops CLI) skips the replica pool: only workers read
    exports, so only they hold connections to the replica.
    """
    async with AsyncExitStack() as stack:
        pg = await open_pg_pool(
            settings.postgres, settings.postgres.dsn.get_secret_value(), min_size=pg_min_size
        )
        stack.push_async_callback(pg.close)
        pg_export = pg
        if export_reads and settings.postgres.replica_dsn is not None:
            pg_export = await open_pg_pool(
                settings.postgres,
                settings.postgres.replica_dsn.get_secret_value(),
                min_size=pg_min_size,
            )
            stack.push_async_callback(pg_export.close)
        redis = await open_arq_redis(settings.redis)
        stack.push_async_callback(redis.aclose)
        dynamo = await stack.enter_async_context(open_dynamo(settings.dynamo))
        s3 = await stack.enter_async_context(open_s3(settings.s3))
        region_files = {}
        for region, bucket in settings.s3.region_buckets.items():
            if region == settings.region:
                continue
            other = settings.s3.model_copy(update={"region": region, "bucket": bucket})
            client = await stack.enter_async_context(open_s3(other))
            region_files[region] = ExportFiles(client, other)
        # One SMTP connection per process, opened at the first email and reused.
        mailer = Mailer(settings.smtp, keep_connection=True)
        stack.push_async_callback(mailer.close)
        yield Resources(
            settings=settings,
            pg=pg,
            pg_export=pg_export,
            queue=ExportQueue(
                redis,
                queue_name=settings.redis.queue_name,
                large_queue_name=settings.redis.large_queue,
            ),
            dynamo=dynamo,
            jobs=JobStore(
                dynamo,
                settings.dynamo,
                cursor_key=_cursor_key(settings),
                home_region=settings.region,
            ),
            users=UserStore(dynamo, settings.dynamo),
            mailer=mailer,
            idempotency=IdempotencyStore(dynamo, settings.dynamo),
            files=ExportFiles(s3, settings.s3),
            tokens=build_token_service(settings.jwt, allow_ephemeral=not settings.is_deployed),
            region_flags=None
            if settings.region is None
            else RegionFlagStore(dynamo, settings.dynamo),
            region_files=region_files,
            schedules=ScheduleStore(dynamo, settings.dynamo),
        )


def _cursor_key(settings: Settings) -> bytes | None:
    """Page cursors are signed with a key derived from the JWT signing key, which every API
    instance shares; without one (local, test) each process signs with a key of its own."""
    if settings.jwt.private_key is None:
        return None
    return derive_cursor_key(settings.jwt.private_key.get_secret_value().encode())
