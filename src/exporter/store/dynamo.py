"""Small helpers shared by the DynamoDB stores: attribute and timestamp encoding, error
translation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from exporter.dynamodb import DynamoError, DynamoUnreachable
from exporter.errors import ConditionFailed, StoreError, StoreUnavailable, WriteConflict

Item = dict[str, dict[str, Any]]


@contextmanager
def dynamo_errors(operation: str) -> Iterator[None]:
    """Translate the DynamoDB client's failures (``exporter/dynamodb.py``) into the store's
    own exceptions: a refused condition is ``ConditionFailed``, a transaction lost to another
    ``WriteConflict``; transient trouble (throttling, a 5xx, including a load balancer's own
    page, or no answer at all) ``StoreUnavailable``; anything else ``StoreError``."""
    try:
        yield
    except DynamoUnreachable as exc:
        raise StoreUnavailable(f"{operation}: {exc}") from exc
    except DynamoError as exc:
        if exc.code == "ConditionalCheckFailedException":
            raise ConditionFailed(operation) from exc
        if exc.code == "TransactionCanceledException":
            reasons = exc.body.get("CancellationReasons") or []
            codes = {r.get("Code") for r in reasons if isinstance(r, dict)}
            if "ConditionalCheckFailed" in codes:
                raise ConditionFailed(operation) from exc
            if "TransactionConflict" in codes:
                raise WriteConflict(f"{operation}: transaction conflict") from exc
            raise StoreUnavailable(f"{operation}: transaction cancelled") from exc
        if exc.transient:
            raise StoreUnavailable(f"{operation}: {exc.code}") from exc
        raise StoreError(f"{operation}: {exc.code}") from exc


_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TS_LENGTH = len("2026-12-02T00:00:00.000000Z")


def format_ts(value: datetime) -> str:
    """Fixed-width UTC ISO 8601, so strings sort in time order (a GSI range key)."""
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_ts(value: str) -> datetime:
    """What ``format_ts`` wrote. ``fromisoformat`` is ~30x faster than ``strptime`` (a job
    item holds a dozen timestamps); anything but that fixed shape goes through
    ``strptime``, which accepts exactly the format or raises ``ValueError``."""
    if len(value) == _TS_LENGTH and value[10] == "T" and value[-1] == "Z":
        parsed = datetime.fromisoformat(value[:-1])
        if parsed.tzinfo is None:  # "...+01Z" is not ours: strptime refuses it below
            return parsed.replace(tzinfo=UTC)
    return datetime.strptime(value, _TS_FORMAT).replace(tzinfo=UTC)


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def get_s(item: Mapping[str, Mapping[str, Any]], name: str) -> str | None:
    attr = item.get(name)
    return None if attr is None else str(attr["S"])


def get_n(item: Mapping[str, Mapping[str, Any]], name: str) -> int | None:
    attr = item.get(name)
    return None if attr is None else int(attr["N"])


def get_bool(item: Mapping[str, Mapping[str, Any]], name: str) -> bool | None:
    attr = item.get(name)
    return None if attr is None else bool(attr["BOOL"])
