"""Our lean DynamoDB client (``exporter/dynamodb.py``): what each request carries, which
answers it retries and how often, how a failure reaches its caller, and the calls stores
make through it against DynamoDB Local."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import pytest
from aiodynamo.credentials import Key
from aiohttp import web
from prometheus_client import REGISTRY

from exporter.aws import open_dynamo
from exporter.config import DynamoSettings, Settings
from exporter.dev.ports import free_port
from exporter.dynamodb import (
    USER_AGENT,
    DynamoDB,
    DynamoError,
    DynamoUnreachable,
    chain_credentials,
)
from exporter.errors import StoreUnavailable
from exporter.store.dynamo import dynamo_errors
from tests.aws_errors import AwsError, aws_error_endpoint


def _calls(operation: str) -> float:
    value = REGISTRY.get_sample_value("exporter_dynamodb_calls_total", {"operation": operation})
    return value or 0.0


async def test_a_request_is_dynamodbs_json_protocol_signed_with_sigv4() -> None:
    seen: list[Mapping[str, str]] = []
    async with aws_error_endpoint(AwsError.dynamo("ValidationException"), seen=seen) as url:
        settings = DynamoSettings(endpoint_url=url, region="eu-west-1", max_attempts=1)
        async with open_dynamo(settings) as client:
            with pytest.raises(DynamoError):
                await client.get_item(TableName="t-jobs", Key={"job_id": {"S": "x"}})
    (headers,) = seen
    assert headers["X-Amz-Target"] == "DynamoDB_20120810.GetItem"
    assert headers["Content-Type"] == "application/x-amz-json-1.0"
    assert headers["User-Agent"] == USER_AGENT
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["X-Amz-Date"])
    date = headers["X-Amz-Date"][:8]
    assert re.fullmatch(
        rf"AWS4-HMAC-SHA256 Credential=local/{date}/eu-west-1/dynamodb/aws4_request, "
        r"SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=[0-9a-f]{64}",
        headers["Authorization"],
    )


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (AwsError.dynamo("ThrottlingException"), 3),
        (AwsError.dynamo("ProvisionedThroughputExceededException"), 3),
        (AwsError.dynamo("InternalServerError", status=500), 3),
        (AwsError.bare(502), 3),
        (AwsError.dynamo("ValidationException"), 1),
        (AwsError.dynamo("ConditionalCheckFailedException"), 1),
    ],
    ids=lambda v: v.name if isinstance(v, AwsError) else str(v),
)
async def test_transient_answers_are_retried_up_to_max_attempts_and_the_call_counted_once(
    error: AwsError, attempts: int
) -> None:
    seen: list[Mapping[str, str]] = []
    before = _calls("UpdateItem")
    async with (
        aws_error_endpoint(error, seen=seen) as url,
        open_dynamo(DynamoSettings(endpoint_url=url, max_attempts=3)) as client,
    ):
        with pytest.raises(DynamoError) as raised:
            await client.update_item(TableName="t-jobs", Key={"job_id": {"S": "x"}})
    assert len(seen) == attempts
    assert raised.value.status == error.status
    assert raised.value.transient is (attempts > 1)
    assert _calls("UpdateItem") - before == 1


async def test_no_answer_is_unreachable_after_every_attempt() -> None:
    settings = DynamoSettings(
        endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2, connect_timeout_s=1
    )
    async with open_dynamo(settings) as client:
        with pytest.raises(DynamoUnreachable, match="GetItem"):
            await client.get_item(TableName="t-jobs", Key={"job_id": {"S": "x"}})


async def test_credentials_in_aws_come_from_botocores_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without keys and without a local endpoint the client asks botocore's provider chain
    (the environment here; a web identity token, the pod's IRSA role, in AWS)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token")
    key = await chain_credentials()()
    assert (key.id, key.secret, key.token) == (
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "session-token",
    )


async def test_no_credentials_anywhere_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DynamoUnreachable, match="no AWS credentials"):
        await chain_credentials()()


async def test_a_table_is_created_waited_for_paged_through_and_deleted(settings: Settings) -> None:
    table = f"t-{uuid.uuid4().hex[:8]}"
    async with open_dynamo(settings.dynamo) as client:
        await client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        try:
            await client.wait_for_table(table)
            for i in range(5):
                await client.put_item(TableName=table, Item={"pk": {"S": f"k{i}"}})
            pages = [p async for p in client.pages("Scan", TableName=table, Limit=2)]
            assert [len(p["Items"]) for p in pages][:3] == [2, 2, 1]
            assert sorted(i["pk"]["S"] for p in pages for i in p["Items"]) == [
                f"k{i}" for i in range(5)
            ]
            names = [n async for p in client.pages("ListTables", Limit=1) for n in p["TableNames"]]
            assert table in names
            got = await client.get_item(TableName=table, Key={"pk": {"S": "k3"}})
            assert got["Item"] == {"pk": {"S": "k3"}}
            missing = await client.get_item(TableName=table, Key={"pk": {"S": "nope"}})
            assert "Item" not in missing
        finally:
            await client.delete_table(TableName=table)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _stub(answer: Handler) -> AsyncIterator[str]:
    """An endpoint on loopback answering every POST with ``answer``; yields its URL."""
    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _json(
    document: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(document).encode(),
        status=status,
        content_type="application/x-amz-json-1.0",
        headers=headers,
    )


@pytest.mark.parametrize("sent_crc", ["good", "bad"])
async def test_an_answer_whose_crc32_does_not_match_is_retried_then_unreachable(
    sent_crc: str,
) -> None:
    body = json.dumps({"Item": {"job_id": {"S": "x"}}}).encode()
    answers = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal answers
        answers += 1
        await request.read()
        crc = zlib.crc32(body) if sent_crc == "good" else zlib.crc32(body) ^ 1
        return _json({"Item": {"job_id": {"S": "x"}}}, headers={"x-amz-crc32": str(crc)})

    async with (
        _stub(answer) as url,
        open_dynamo(DynamoSettings(endpoint_url=url, max_attempts=2)) as client,
    ):
        if sent_crc == "good":
            got = await client.get_item(TableName="t-jobs", Key={"job_id": {"S": "x"}})
            assert got == {"Item": {"job_id": {"S": "x"}}} and answers == 1
        else:
            with pytest.raises(DynamoUnreachable, match="CRC32"):
                await client.get_item(TableName="t-jobs", Key={"job_id": {"S": "x"}})
            assert answers == 2


async def test_a_success_that_is_not_json_is_retried_then_unreachable() -> None:
    answers = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal answers
        answers += 1
        return web.Response(body=b"<html>captive portal</html>", content_type="text/html")

    async with (
        _stub(answer) as url,
        open_dynamo(DynamoSettings(endpoint_url=url, max_attempts=2)) as client,
    ):
        with pytest.raises(DynamoUnreachable, match="not JSON"):
            await client.get_item(TableName="t-jobs", Key={"job_id": {"S": "x"}})
    assert answers == 2


async def test_a_failure_fetching_credentials_is_unreachable_and_retried() -> None:
    asked = 0

    async def failing() -> Key:
        nonlocal asked
        asked += 1
        raise RuntimeError(
            "Credentials were refreshed, but the refreshed credentials are still expired."
        )

    async with aiohttp.ClientSession() as session:
        client = DynamoDB(
            session,
            region="eu-west-1",
            endpoint_url="http://127.0.0.1:9",
            credentials=failing,
            max_attempts=2,
        )
        with pytest.raises(DynamoUnreachable, match="credentials: RuntimeError") as raised:
            await client.get_item(TableName="t-jobs", Key={"job_id": {"S": "x"}})
    assert asked == 2
    with pytest.raises(StoreUnavailable), dynamo_errors("get"):
        raise raised.value


async def test_waiting_for_a_table_aws_does_not_know_yet_keeps_asking() -> None:
    """DescribeTable reads eventually consistent metadata: just after CreateTable, AWS may
    answer ResourceNotFoundException."""
    described = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal described
        described += 1
        if described == 1:
            kind = "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException"
            return _json({"__type": kind, "message": "Requested resource not found"}, status=400)
        return _json({"Table": {"TableName": "t-new", "TableStatus": "ACTIVE"}})

    async with (
        _stub(answer) as url,
        open_dynamo(DynamoSettings(endpoint_url=url, max_attempts=1)) as client,
    ):
        await client.wait_for_table("t-new")
    assert described == 2


async def test_a_retried_transaction_carries_the_same_client_request_token() -> None:
    """DynamoDB applies a TransactWriteItems once per token (for 10 minutes): the retry of
    one whose answer was lost is recognised, not refused by its own conditions."""
    tokens: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        tokens.append(json.loads(await request.read()).get("ClientRequestToken"))
        throttled = {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException"}
        return _json(throttled, status=400)

    async with (
        _stub(answer) as url,
        open_dynamo(DynamoSettings(endpoint_url=url, max_attempts=3)) as client,
    ):
        for _ in range(2):
            with pytest.raises(DynamoError):
                await client.transact_write_items(TransactItems=[])
    assert len(tokens) == 6 and all(tokens)
    assert len(set(tokens[:3])) == 1 and len(set(tokens[3:])) == 1  # one per call
    assert tokens[0] != tokens[3]
