"""Cron: delete export records past their retention (DynamoDB TTL does the same, lazily)."""

from __future__ import annotations

import structlog

from exporter.models import utcnow
from exporter.resources import Resources

log = structlog.stdlib.get_logger("exporter.jobs.expire")


async def expire_jobs(resources: Resources) -> int:
    deleted = await resources.jobs.delete_expired(now=utcnow())
    log.info("expire.done", deleted=deleted)
    return deleted
