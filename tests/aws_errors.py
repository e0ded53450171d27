"""An HTTP endpoint that answers every AWS call with one error, as AWS does when it throttles
or fails: DynamoDB Local never throttles and moto never answers SlowDown, so the real
clients are pointed here to see those answers travel through botocore and our translation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class AwsError:
    """One error answer: HTTP status, the body AWS would send, its content type."""

    status: int
    body: str
    content_type: str
    name: str  # for test ids

    @classmethod
    def dynamo(cls, code: str, *, status: int = 400) -> AwsError:
        """DynamoDB's JSON protocol: the code travels in ``__type``."""
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": code})
        return cls(status, body, "application/x-amz-json-1.0", f"{status}-{code}")

    @classmethod
    def s3(cls, code: str, *, status: int) -> AwsError:
        """S3's REST-XML protocol: an ``<Error>`` document."""
        body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>"
        return cls(status, body, "application/xml", f"{status}-{code}")

    @classmethod
    def bare(cls, status: int) -> AwsError:
        """A bare gateway error (a load balancer in front), no AWS error document."""
        return cls(status, "<html>bad gateway</html>", "text/html", f"{status}-bare")


@asynccontextmanager
async def aws_error_endpoint(
    error: AwsError, *, seen: list[Mapping[str, str]] | None = None
) -> AsyncIterator[str]:
    """Serve ``error`` to every request on a loopback port; yields the endpoint URL. Each
    request's headers are appended to ``seen`` when given."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if seen is not None:
            seen.append(dict(request.headers))
        return web.Response(status=error.status, text=error.body, content_type=error.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
