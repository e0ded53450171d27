"""Where the API says the use cases' and stores' refusals in HTTP: one context manager around
every call a handler makes into ``exporter.exports`` or a store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from exporter.errors import (
    BadRequest,
    Conflict,
    CreateContended,
    ExportNotFound,
    IdempotencyKeyReused,
    InvalidCursor,
    NotFound,
    QueueUnavailable,
    QuotaExceeded,
    ScheduleLimitReached,
    ScheduleNotFound,
    ServiceUnavailable,
    StoreError,
    TooManyRequests,
    ValidationFailed,
)
from exporter.exports.cancel import AlreadyFinished

log = structlog.stdlib.get_logger("exporter.api.exports")


def export_not_found() -> NotFound:
    # The same answer for "missing" and "someone else's": ids are not confirmed to strangers.
    return NotFound("No export with this id.", code="export_not_found")


@contextmanager
def export_problems() -> Iterator[None]:
    """Translate ``ExportRefused``, ``StoreError`` and ``QueueUnavailable`` into ``ApiError``."""
    try:
        yield
    except ExportNotFound:
        raise export_not_found() from None
    except AlreadyFinished as exc:
        raise Conflict(
            f"The export has already finished ({exc.job.status.value}); only queued or "
            "running exports can be cancelled.",
            code="export_finished",
        ) from None
    except QuotaExceeded as exc:
        raise TooManyRequests(
            str(exc), retry_after_s=exc.retry_after_s, code="export_quota_exceeded"
        ) from None
    except IdempotencyKeyReused as exc:
        raise ValidationFailed(str(exc), code="idempotency_key_reused") from None
    except CreateContended as exc:
        raise ServiceUnavailable(str(exc), code="create_contended") from None
    except QueueUnavailable:
        raise ServiceUnavailable(
            "The export could not be queued. Please retry.", code="queue_unavailable"
        ) from None
    except InvalidCursor as exc:
        # The caller's input, not an outage.
        raise BadRequest(str(exc), code="invalid_cursor") from None
    except StoreError as exc:
        log.error("export.read_failed", error=str(exc))
        raise ServiceUnavailable(
            "Export records are unavailable. Please retry.", code="store_unavailable"
        ) from None


@contextmanager
def file_store_problems() -> Iterator[None]:
    """Signing a download URL: a failing file store is a retryable 503."""
    try:
        yield
    except StoreError as exc:
        log.error("export.sign_failed", error=str(exc))
        raise ServiceUnavailable(
            "The file store is unavailable. Please retry.", code="files_unavailable"
        ) from None


def schedule_not_found() -> NotFound:
    # The same answer for "missing" and "someone else's".
    return NotFound("No export schedule with this id.", code="schedule_not_found")


@contextmanager
def schedule_problems() -> Iterator[None]:
    """Translate the schedule use cases' refusals and store errors into ``ApiError``."""
    try:
        yield
    except ScheduleNotFound:
        raise schedule_not_found() from None
    except ScheduleLimitReached as exc:
        raise Conflict(str(exc), code="schedule_limit_reached") from None
    except StoreError as exc:
        log.error("schedule.store_failed", error=str(exc))
        raise ServiceUnavailable(
            "Export schedules are unavailable. Please retry.", code="store_unavailable"
        ) from None
