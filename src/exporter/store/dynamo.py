"""Small helpers shared by the DynamoDB stores: attribute and timestamp encoding, error
translation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from exporter.aws import aws_errors, error_code
from exporter.errors import ConditionFailed, StoreUnavailable, WriteConflict

# Error codes AWS documents as retryable for DynamoDB.
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)

Item = dict[str, dict[str, Any]]


@contextmanager
def dynamo_errors(operation: str) -> Iterator[None]:
    """Translate botocore errors into the store's own exceptions: DynamoDB's condition and
    transaction outcomes here, everything else as every AWS client does (``aws_errors``)."""
    with aws_errors(operation, retryable_codes=RETRYABLE_CODES):
        try:
            yield
        except ClientError as exc:
            code, _ = error_code(exc)
            if code == "ConditionalCheckFailedException":
                raise ConditionFailed(operation) from exc
            if code == "TransactionCanceledException":
                reasons = exc.response.get("CancellationReasons", [])
                if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                    raise ConditionFailed(operation) from exc
                if any(r.get("Code") == "TransactionConflict" for r in reasons):
                    raise WriteConflict(f"{operation}: transaction conflict") from exc
                raise StoreUnavailable(f"{operation}: transaction cancelled") from exc
            raise


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
