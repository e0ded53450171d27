"""What every AWS request of ours carries (``exporter/aws.py``)."""

from __future__ import annotations

from collections.abc import Mapping

import botocore
import pytest

from exporter import __version__
from exporter.aws import USER_AGENT, open_dynamo, open_s3
from exporter.config import DynamoSettings, S3Settings
from exporter.errors import StoreError
from exporter.store.files import ExportFiles
from exporter.store.jobs import JobStore
from tests.aws_errors import AwsError, aws_error_endpoint


async def test_dynamodb_and_s3_requests_carry_our_fixed_user_agent() -> None:
    """A given User-Agent is sent as it is: botocore then skips rebuilding its own (~20 % of
    a call's CPU), and AWS's logs still name the service and the SDK versions."""
    seen: list[Mapping[str, str]] = []
    async with aws_error_endpoint(AwsError.dynamo("ValidationException"), seen=seen) as url:
        settings = DynamoSettings(endpoint_url=url, max_attempts=1)
        async with open_dynamo(settings) as client:
            with pytest.raises(StoreError):
                await JobStore(client, settings).get("0b6c5f9e-54f8-4a4b-8f7e-6f1a3c0d2e11")
    async with aws_error_endpoint(AwsError.s3("AccessDenied", status=403), seen=seen) as url:
        s3_settings = S3Settings(endpoint_url=url, bucket="exports", max_attempts=1)
        async with open_s3(s3_settings) as client:
            with pytest.raises(StoreError):
                await ExportFiles(client, s3_settings).delete("exports/x/y.csv")
    assert len(seen) == 2
    for headers in seen:
        assert headers["User-Agent"] == f"{USER_AGENT} botocore/{botocore.__version__}"
    assert USER_AGENT.startswith(f"exporter/{__version__} aiobotocore/")
