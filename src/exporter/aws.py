"""How our AWS clients are opened, and how the S3 client's errors are translated into the
store errors of ``exporter.errors``, at one boundary. DynamoDB goes through our own lean
client (``exporter/dynamodb.py``; its errors are translated in ``store/dynamo.py``), S3
through aiobotocore."""

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
from exporter.dynamodb import DynamoDB, chain_credentials, open_dynamodb, static_credentials
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


# The User-Agent of every S3 request (aiobotocore's session adds "botocore/<version>").
# Given one, botocore sends it as it is; left to itself, it rebuilds (and sanitises, part
# by part) a User-Agent of some 40 parts twice per request: ~20 % of a call's CPU here
# (docs/benchmarks.md).
USER_AGENT = f"exporter/{__version__} aiobotocore/{aiobotocore.__version__}"


@asynccontextmanager
async def _open_client(service: str, settings: S3Settings, **config: Any) -> AsyncIterator[Any]:
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
async def open_dynamo(settings: DynamoSettings) -> AsyncIterator[DynamoDB]:
    """``async with open_dynamo(settings) as client``: our lean DynamoDB client
    (``exporter/dynamodb.py``), its every API call counted
    (``exporter_dynamodb_calls_total{operation}``, once per call, not per retry)."""
    credentials = client_credentials(
        settings.endpoint_url, settings.access_key_id, settings.secret_access_key
    )
    async with open_dynamodb(
        region=settings.region,
        endpoint_url=settings.endpoint_url,
        credentials=(
            static_credentials(
                credentials["aws_access_key_id"], credentials["aws_secret_access_key"]
            )
            if credentials
            else chain_credentials()
        ),
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
        max_attempts=settings.max_attempts,
        max_connections=settings.max_connections,
        on_call=observe_dynamodb_call,
    ) as client:
        yield client


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
