"""A lean DynamoDB client: DynamoDB's JSON API over one aiohttp session, each request signed
by aiodynamo's SigV4 signer, credentials from botocore's provider chain (the pod's IRSA role
in AWS), retries and errors ours.

Why not botocore for DynamoDB: it builds every request from the service model, walks the
parameters, serialises them shape by shape, signs through its generic signer and parses the
answer's headers through ``email.message``: ~1.5-2.6 ms of CPU per call on our machine, ~70 %
of a create's CPU. Our stores already write DynamoDB's JSON (``{"S": ...}`` attribute values,
expressions), so the request body *is* the parameters: this client costs ~0.4 ms a call
(docs/benchmarks.md, "Cost per export"). S3 keeps aiobotocore (multipart uploads, presigned
URLs), and so does the credential chain.

The methods are named as botocore's (``get_item(TableName=..., Key=...)``) and answer what
DynamoDB answers (botocore's parsed response, less ``ResponseMetadata``), so a store reads the
same either way. Errors, translated into the store's at one place (``store/dynamo.py``)::

    DynamoFailure            anything a call raises
    ├── DynamoError          DynamoDB (or something in front of it) answered, not 200:
    │                        .code (the error's type, or the HTTP status as text when the
    │                        answer was not DynamoDB's error document), .status, .body
    │                        (the document: CancellationReasons, a refused write's Item)
    └── DynamoUnreachable    no usable answer: refused or reset connection, timeout, a body
                             whose CRC32 is not the one DynamoDB sent or that is not JSON,
                             no credentials or a failure fetching them

A call is retried (jittered exponential backoff as botocore's "standard" mode: up to
``max_attempts`` tries, at most 20 s apart; without that mode's process-wide retry quota)
when it was throttled, DynamoDB failed (5xx) or did not answer; the caller sees the last
failure.

Endpoints: ``https://dynamodb.{region}.amazonaws.com`` unless ``dynamo.endpoint_url`` says
otherwise (set it for the China regions, FIPS or a VPC endpoint). The signer signs the host
without a port, so an endpoint that checks signatures must be on the scheme's default port
(AWS's are; DynamoDB Local checks none). Proxies come from ``HTTPS_PROXY``/``NO_PROXY``;
``AWS_CA_BUNDLE`` is not read (the system's CAs are).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from aiodynamo.credentials import Key
from aiodynamo.sign import signed_dynamo_request
from yarl import URL

from exporter import __version__

# Error codes AWS documents as transient for DynamoDB (retried, then StoreUnavailable).
TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
        "TransactionInProgressException",
    }
)

USER_AGENT = f"exporter/{__version__} aiodynamo aiohttp/{aiohttp.__version__}"

_MAX_BACKOFF_S = 20.0
_TABLE_ACTIVE_POLLS = 120  # one a second: a new on-demand table is ACTIVE within seconds


class DynamoFailure(Exception):
    """A DynamoDB call failed (see the tree in the module's docstring)."""


class DynamoError(DynamoFailure):
    """DynamoDB answered with an error."""

    def __init__(self, operation: str, status: int, body: bytes) -> None:
        self.operation = operation
        self.status = status
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            document = {}
        self.body: dict[str, Any] = document if isinstance(document, dict) else {}
        kind = self.body.get("__type")
        # "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"; a load
        # balancer's own page has none: the status stands in, as botocore does ("503").
        self.code = kind.rsplit("#", 1)[-1] if isinstance(kind, str) and kind else str(status)
        message = self.body.get("message", self.body.get("Message", ""))
        self.message = message if isinstance(message, str) else ""
        super().__init__(f"{operation}: {self.code} ({status})")

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES or self.status >= 500


class DynamoUnreachable(DynamoFailure):
    """No answer from DynamoDB (or no credentials to ask with)."""


CredentialSource = Callable[[], Awaitable[Key]]


def static_credentials(access_key_id: str, secret_access_key: str) -> CredentialSource:
    key = Key(id=access_key_id, secret=secret_access_key)

    async def credentials() -> Key:
        return key

    return credentials


def chain_credentials() -> CredentialSource:
    """botocore's provider chain (environment, web identity / IRSA, container, instance
    metadata), resolved on first use and refreshed by botocore before they expire."""
    session = get_session()
    resolved: list[Any] = []
    first_load = asyncio.Lock()  # calls that come together at start-up ask the chain once

    async def credentials() -> Key:
        if not resolved:
            async with first_load:
                if not resolved:
                    found = await session.get_credentials()
                    if found is None:
                        raise DynamoUnreachable("no AWS credentials found")
                    resolved.append(found)
        frozen = await resolved[0].get_frozen_credentials()
        return Key(id=frozen.access_key, secret=frozen.secret_key, token=frozen.token)

    return credentials


class DynamoDB:
    """One DynamoDB endpoint and region, over the given session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        region: str,
        endpoint_url: str | None,
        credentials: CredentialSource,
        max_attempts: int,
        on_call: Callable[[str], None] = lambda _operation: None,
    ) -> None:
        self._session = session
        self._region = region
        self._endpoint = URL(endpoint_url or f"https://dynamodb.{region}.amazonaws.com")
        self._credentials = credentials
        self._max_attempts = max_attempts
        self._on_call = on_call

    async def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``operation`` (``"GetItem"``) with DynamoDB's JSON parameters; its JSON answer."""
        self._on_call(operation)
        if operation == "TransactWriteItems" and "ClientRequestToken" not in params:
            # As botocore fills it in: a retry of a transaction that did commit (its answer
            # lost) is then recognised by DynamoDB for 10 minutes and not applied twice, nor
            # refused by its own conditions.
            params = {**params, "ClientRequestToken": str(uuid.uuid4())}
        attempt = 1
        while True:
            try:
                return await self._send(operation, params)
            except DynamoError as exc:
                if not exc.transient or attempt >= self._max_attempts:
                    raise
            except DynamoUnreachable:
                if attempt >= self._max_attempts:
                    raise
            # Jitter for spreading retries, not for secrets.
            backoff = random.random() * min(_MAX_BACKOFF_S, 2.0 ** (attempt - 1))  # noqa: S311
            await asyncio.sleep(backoff)
            attempt += 1

    async def _send(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            key = await self._credentials()
        except DynamoUnreachable:
            raise
        except Exception as exc:  # STS, the metadata service, botocore's refresh: any of them
            # Whatever the provider chain raised while fetching or refreshing credentials is
            # trouble reaching AWS: retried, then StoreUnavailable, never an unexplained 500.
            raise DynamoUnreachable(f"{operation}: credentials: {type(exc).__name__}") from exc
        request = signed_dynamo_request(
            key=key,
            payload=params,
            action=operation,
            region=self._region,
            endpoint=self._endpoint,
        )
        headers = {**request.headers, "User-Agent": USER_AGENT}
        try:
            async with self._session.post(
                self._endpoint, data=request.body, headers=headers
            ) as response:
                body = await response.read()
                status = response.status
                checksum = response.headers.get("x-amz-crc32")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DynamoUnreachable(f"{operation}: {type(exc).__name__}") from exc
        if checksum is not None and checksum != str(zlib.crc32(body)):
            # DynamoDB's CRC32 of the body it sent: a mismatch is a damaged answer (retried,
            # as botocore does), never an item read wrong.
            raise DynamoUnreachable(f"{operation}: the answer's CRC32 does not match")
        if status != 200:
            raise DynamoError(operation, status, body)
        try:
            answer = json.loads(body)
        except ValueError as exc:  # a damaged answer, as botocore's parser error: retried
            raise DynamoUnreachable(f"{operation}: the answer is not JSON") from exc
        return answer if isinstance(answer, dict) else {}

    async def pages(self, operation: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Every page of a ``Query``, ``Scan`` or ``ListTables``."""
        start, last = (
            ("ExclusiveStartTableName", "LastEvaluatedTableName")
            if operation == "ListTables"
            else ("ExclusiveStartKey", "LastEvaluatedKey")
        )
        while True:
            page = await self.call(operation, params)
            yield page
            if not page.get(last):
                return
            params = {**params, start: page[last]}

    async def wait_for_table(self, name: str) -> None:
        """Until the table is ``ACTIVE`` (a new one is ``CREATING`` for a few seconds)."""
        for _ in range(_TABLE_ACTIVE_POLLS):
            try:
                described = await self.describe_table(TableName=name)
            except DynamoError as exc:
                # DescribeTable reads eventually consistent metadata: right after CreateTable
                # AWS may not know the table yet (botocore's waiter retried this too).
                if exc.code != "ResourceNotFoundException":
                    raise
                described = {}
            if described.get("Table", {}).get("TableStatus") == "ACTIVE":
                return
            await asyncio.sleep(1)
        raise DynamoUnreachable(f"table {name} not ACTIVE after {_TABLE_ACTIVE_POLLS} s")

    # botocore's names, so stores and tests read as they did.
    async def get_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("GetItem", params)

    async def put_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("PutItem", params)

    async def update_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("UpdateItem", params)

    async def delete_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("DeleteItem", params)

    async def query(self, **params: Any) -> dict[str, Any]:
        return await self.call("Query", params)

    async def scan(self, **params: Any) -> dict[str, Any]:
        return await self.call("Scan", params)

    async def transact_write_items(self, **params: Any) -> dict[str, Any]:
        return await self.call("TransactWriteItems", params)

    async def create_table(self, **params: Any) -> dict[str, Any]:
        return await self.call("CreateTable", params)

    async def delete_table(self, **params: Any) -> dict[str, Any]:
        return await self.call("DeleteTable", params)

    async def describe_table(self, **params: Any) -> dict[str, Any]:
        return await self.call("DescribeTable", params)

    async def describe_time_to_live(self, **params: Any) -> dict[str, Any]:
        return await self.call("DescribeTimeToLive", params)

    async def update_time_to_live(self, **params: Any) -> dict[str, Any]:
        return await self.call("UpdateTimeToLive", params)


@asynccontextmanager
async def open_dynamodb(
    *,
    region: str,
    endpoint_url: str | None,
    credentials: CredentialSource,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_attempts: int,
    max_connections: int,
    on_call: Callable[[str], None] = lambda _operation: None,
) -> AsyncIterator[DynamoDB]:
    """``async with open_dynamodb(...) as client``: a client over a session of its own,
    closed on exit."""
    timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s)
    connector = aiohttp.TCPConnector(limit=max_connections)
    async with aiohttp.ClientSession(
        # HTTPS_PROXY / NO_PROXY from the environment, as botocore honoured them.
        trust_env=True,
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding"),
    ) as session:
        yield DynamoDB(
            session,
            region=region,
            endpoint_url=endpoint_url,
            credentials=credentials,
            max_attempts=max_attempts,
            on_call=on_call,
        )
