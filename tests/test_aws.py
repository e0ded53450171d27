"""What every AWS request of ours carries (``exporter/aws.py``)."""

from __future__ import annotations

from collections.abc import Mapping

import botocore
import pytest

from exporter import __version__
from exporter.aws import USER_AGENT, open_s3
from exporter.config import S3Settings
from exporter.errors import StoreError
from exporter.store.files import ExportFiles
from tests.aws_errors import AwsError, aws_error_endpoint


async def test_s3_requests_carry_our_fixed_user_agent() -> None:
    """A given User-Agent is sent as it is: botocore then skips rebuilding its own (~20 % of
    a call's CPU), and AWS's logs still name the service and the SDK versions. (DynamoDB's
    requests go through our own client: tests/test_dynamodb.py.)"""
    seen: list[Mapping[str, str]] = []
    async with aws_error_endpoint(AwsError.s3("AccessDenied", status=403), seen=seen) as url:
        s3_settings = S3Settings(endpoint_url=url, bucket="exports", max_attempts=1)
        async with open_s3(s3_settings) as client:
            with pytest.raises(StoreError):
                await ExportFiles(client, s3_settings).delete("exports/x/y.csv")
    assert len(seen) == 1
    assert seen[0]["User-Agent"] == f"{USER_AGENT} botocore/{botocore.__version__}"
    assert USER_AGENT.startswith(f"exporter/{__version__} aiobotocore/")
