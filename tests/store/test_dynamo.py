"""How DynamoDB's refusals reach the rest of the code: throttling and 5xx are
``StoreUnavailable`` (retried), the rest ``StoreError`` (fails at once). The real client is
pointed at an endpoint answering as DynamoDB does, so the client's parsing is part of it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from exporter.aws import open_dynamo
from exporter.config import DynamoSettings
from exporter.dev.ports import free_port
from exporter.dynamodb import DynamoError, DynamoFailure, DynamoUnreachable
from exporter.errors import ConditionFailed, StoreError, StoreUnavailable, WriteConflict
from exporter.store.dynamo import dynamo_errors, format_ts, parse_ts
from exporter.store.jobs import JobStore
from tests.aws_errors import AwsError, aws_error_endpoint


async def read_a_job_from(error: AwsError) -> None:
    """One real JobStore read against an endpoint that answers ``error``."""
    async with aws_error_endpoint(error) as url:
        # One attempt: the client's retries (with their backoff) are not what is tested.
        settings = DynamoSettings(endpoint_url=url, max_attempts=1)
        async with open_dynamo(settings) as client:
            await JobStore(client, settings).get(str(uuid.uuid4()))


@pytest.mark.parametrize(
    "error",
    [
        AwsError.dynamo("ProvisionedThroughputExceededException"),
        AwsError.dynamo("ThrottlingException"),
        AwsError.dynamo("RequestLimitExceeded"),
        AwsError.dynamo("InternalServerError", status=500),
        # A 5xx without DynamoDB's error document (botocore calls it "503").
        AwsError.bare(503),
        AwsError.bare(500),
    ],
    ids=lambda e: e.name,
)
async def test_throttling_and_server_errors_are_transient(error: AwsError) -> None:
    with pytest.raises(StoreUnavailable):
        await read_a_job_from(error)


@pytest.mark.parametrize(
    "code", ["ValidationException", "AccessDeniedException", "ResourceNotFoundException"]
)
async def test_a_refused_request_is_a_permanent_store_error(code: str) -> None:
    with pytest.raises(StoreError) as raised:
        await read_a_job_from(AwsError.dynamo(code))
    assert not isinstance(raised.value, StoreUnavailable)
    assert code in str(raised.value)


async def test_an_unreachable_endpoint_is_transient() -> None:
    settings = DynamoSettings(
        endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout_s=1
    )
    async with open_dynamo(settings) as client:
        with pytest.raises(StoreUnavailable):
            await JobStore(client, settings).get(str(uuid.uuid4()))


def dynamo_error(code: str, *, status: int = 400, **document: object) -> DynamoError:
    """What the client raises for an answer with DynamoDB's error document."""
    body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": code, **document}
    return DynamoError("UpdateItem", status, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("raised", "translated"),
    [
        (dynamo_error("ProvisionedThroughputExceededException"), StoreUnavailable),
        (dynamo_error("ThrottlingException"), StoreUnavailable),
        (DynamoError("UpdateItem", 503, b"<html>busy</html>"), StoreUnavailable),
        (DynamoError("UpdateItem", 502, b""), StoreUnavailable),
        (dynamo_error("ConditionalCheckFailedException"), ConditionFailed),
        (dynamo_error("ValidationException"), StoreError),
        (
            dynamo_error(
                "TransactionCanceledException",
                CancellationReasons=[{"Code": "None"}, {"Code": "ConditionalCheckFailed"}],
            ),
            ConditionFailed,
        ),
        (
            dynamo_error(
                "TransactionCanceledException",
                CancellationReasons=[{"Code": "TransactionConflict"}, {"Code": "None"}],
            ),
            WriteConflict,
        ),
        (
            dynamo_error(
                "TransactionCanceledException", CancellationReasons=[{"Code": "ThrottlingError"}]
            ),
            StoreUnavailable,
        ),
        (DynamoUnreachable("UpdateItem: ClientConnectorError"), StoreUnavailable),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, type) else str(v)[:60],
)
def test_the_translation_names_each_failure_by_what_to_do_about_it(
    raised: DynamoFailure, translated: type[StoreError]
) -> None:
    with pytest.raises(StoreError) as caught, dynamo_errors("update"):
        raise raised
    assert type(caught.value) is translated
    assert caught.value.__cause__ is raised


def test_an_answer_that_is_not_dynamodbs_error_document_is_named_by_its_status() -> None:
    error = DynamoError("GetItem", 502, b"<html>bad gateway</html>")
    assert (error.code, error.status, error.body, error.transient) == ("502", 502, {}, True)
    refused = dynamo_error("ConditionalCheckFailedException", Item={"job_id": {"S": "x"}})
    assert refused.code == "ConditionalCheckFailedException" and not refused.transient
    assert refused.body["Item"] == {"job_id": {"S": "x"}}


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 2, 9, 30, 1, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 3, 29, 3, 0, 0, 5, tzinfo=ZoneInfo("Europe/Berlin")),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_timestamps_are_fixed_width_utc_and_read_back_exactly(value: datetime) -> None:
    text = format_ts(value)
    assert len(text) == len("2026-12-02T00:00:00.000000Z") and text.endswith("Z")
    assert text == value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert parse_ts(text) == value and parse_ts(text).tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02T00:00:00.000+01Z",  # the right length, an offset: not what we write
        "2026-12-02 00:00:00.000000Z",
        "2026-12-02T00:00:00Z",
        "2026-12-02",
        "",
    ],
)
def test_a_timestamp_we_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="does not match format"):
        parse_ts(text)
