"""Everything our AWS clients (DynamoDB, S3) share: how they are opened and how their
errors are translated into the store errors of ``exporter.errors``, at one boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiobotocore
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from exporter import __version__
from exporter.config import DynamoSettings, S3Settings
from exporter.errors import StoreError, StoreUnavailable
from exporter.metrics import observe_dynamodb_call


def client_credentials(
    endpoint_url: str | None, access_key_id: SecretStr | None, secret_access_key: SecretStr | None
) -> dict[str, str]:
    """Explicit keys when set; dummy keys for a local endpoint (which accepts any); nothing
    in AWS, where the pod's IRSA role provides them."""
    if access_key_id and secret_access_key:
        return {
            "aws_access_key_id": access_key_id.get_secret_value(),
            "aws_secret_access_key": secret_access_key.get_secret_value(),
        }
    if endpoint_url:
        return {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    return {}


# The User-Agent of every AWS request (aiobotocore's session adds "botocore/<version>").
# Given one, botocore sends it as it is; left to itself, it rebuilds (and sanitises, part
# by part) a User-Agent of some 40 parts twice per request: ~20 % of a DynamoDB call's CPU
# here (docs/benchmarks.md).
USER_AGENT = f"exporter/{__version__} aiobotocore/{aiobotocore.__version__}"


@asynccontextmanager
async def _open_client(
    service: str, settings: DynamoSettings | S3Settings, **config: Any
) -> AsyncIterator[Any]:
    """A client with bounded timeouts and botocore's standard retries (jittered backoff)."""
    credentials = client_credentials(
        settings.endpoint_url, settings.access_key_id, settings.secret_access_key
    )
    aio_config = AioConfig(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        user_agent=USER_AGENT,
        **config,
    )
    async with get_session().create_client(
        service,
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=aio_config,
        **credentials,
    ) as client:
        yield client


@asynccontextmanager
async def open_dynamo(settings: DynamoSettings) -> AsyncIterator[Any]:
    """``async with open_dynamo(settings) as client``: a DynamoDB client whose every API call
    is counted (``exporter_dynamodb_calls_total{operation}``)."""
    # Every request is built by our stores, and DynamoDB validates it anyway (a
    # ValidationException is a StoreError): botocore's client-side walk over the
    # parameters was ~7 % of a create's CPU (docs/benchmarks.md).
    async with _open_client("dynamodb", settings, parameter_validation=False) as client:
        client.meta.events.register("before-call.dynamodb", _count_dynamodb_call)
        yield client


def _count_dynamodb_call(model: Any, **_: Any) -> None:
    """botocore's ``before-call`` event, once per API call (before its retries). Returns
    None: a value here would stand in for the service's response."""
    observe_dynamodb_call(model.name)


def open_s3(settings: S3Settings) -> Any:
    """``async with open_s3(settings) as client``: an S3 client (SigV4; path-style against a
    local endpoint, which has no wildcard DNS on loopback)."""
    return _open_client(
        "s3",
        settings,
        signature_version="s3v4",
        s3={"addressing_style": "path" if settings.endpoint_url else "virtual"},
    )


def error_code(exc: ClientError) -> tuple[str, int]:
    """The AWS error code and the HTTP status of a ``ClientError``."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


@contextmanager
def aws_errors(operation: str, *, retryable_codes: frozenset[str]) -> Iterator[None]:
    """Translate botocore errors: transient trouble (a retryable code, any 5xx, including a
    load balancer's own page without an AWS error document, or an unreachable endpoint) is
    ``StoreUnavailable``; the rest ``StoreError``. Services with codes of their own catch
    those first (``store/dynamo.py``)."""
    try:
        yield
    except ClientError as exc:
        code, status = error_code(exc)
        if code in retryable_codes or status >= 500:
            raise StoreUnavailable(f"{operation}: {code or status}") from exc
        raise StoreError(f"{operation}: {code or 'client error'}") from exc
    except BotoCoreError as exc:
        # Connection refused, timeouts, DNS: the endpoint is unreachable for now.
        raise StoreUnavailable(f"{operation}: {type(exc).__name__}") from exc
