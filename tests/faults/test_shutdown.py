"""The API on SIGTERM: stops accepting, finishes what is in flight, closes its pools, exits 0."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from tests.faults.conftest import Api, MakeUsers
from tests.faults.stack import Processes

pytestmark = pytest.mark.faults


@pytest.fixture(name="silent_endpoint")
def _fix_silent_endpoint() -> Iterator[str]:
    """A port that accepts connections and never answers: a DynamoDB that hangs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # the kernel completes handshakes; nobody ever reads
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones(
    procs: Processes, api: Api, make_users: MakeUsers, silent_endpoint: str
) -> None:
    (user,) = await make_users(1)
    procs.env.update(
        {
            # One DynamoDB call that takes exactly its 2 s read timeout: a slow request.
            "EXPORTER_DYNAMO__ENDPOINT_URL": silent_endpoint,
            "EXPORTER_DYNAMO__READ_TIMEOUT_S": "2",
            "EXPORTER_DYNAMO__MAX_ATTEMPTS": "1",
            "EXPORTER_API__SHUTDOWN_TIMEOUT_S": "10",
        }
    )
    server = await procs.start_api()
    api.base = procs.api_url
    in_flight = asyncio.create_task(api.create(user))
    await asyncio.sleep(0.5)  # the request is waiting on DynamoDB now

    server.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.create(user)  # no longer accepting

    status, problem = await in_flight  # answered in full, not cut off
    assert status == 503 and problem["code"] == "store_unavailable"
    assert await asyncio.to_thread(server.wait, 15) == 0
