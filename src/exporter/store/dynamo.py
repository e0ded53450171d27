"""Small helpers shared by the DynamoDB stores: attribute encoding and error translation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from exporter.errors import ConditionFailed, StoreError, StoreUnavailable, WriteConflict

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
    """Translate botocore errors into the store's own exceptions."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ConditionalCheckFailedException":
            raise ConditionFailed(operation) from exc
        if code == "TransactionCanceledException":
            reasons = exc.response.get("CancellationReasons", [])
            if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                raise ConditionFailed(operation) from exc
            if any(r.get("Code") == "TransactionConflict" for r in reasons):
                raise WriteConflict(f"{operation}: transaction conflict") from exc
            raise StoreUnavailable(f"{operation}: transaction cancelled") from exc
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        # A 5xx without DynamoDB's error document (a load balancer's own page) carries only
        # its status as the code: as transient as InternalServerError.
        if code in RETRYABLE_CODES or status >= 500:
            raise StoreUnavailable(f"{operation}: {code}") from exc
        raise StoreError(f"{operation}: {code or 'client error'}") from exc
    except BotoCoreError as exc:
        # Connection refused, timeouts, DNS: the endpoint is unreachable for now.
        raise StoreUnavailable(f"{operation}: {type(exc).__name__}") from exc


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
