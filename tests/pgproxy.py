"""A TCP proxy in front of PostgreSQL that stalls each connection's server-to-client bytes
after a budget: a network that goes quiet mid-stream, so a test can act while an export's
COPY has written part of its file and waits for more."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# PostgreSQL's CancelRequest: length 16, then the request code 80877102.
_CANCEL_REQUEST = struct.pack("!ii", 16, 80877102)


class StallingProxy:
    """Forwards every connection to PostgreSQL; each one passes at most ``stall_after_bytes``
    from the server, then holds the rest (PostgreSQL blocks on the full socket) until
    ``resume()``. Counts the cancel requests clients send through it."""

    def __init__(self, upstream_port: int, *, stall_after_bytes: int) -> None:
        self.upstream_port = upstream_port
        self.stall_after_bytes = stall_after_bytes
        self.port = 0
        self.stalled = asyncio.Event()  # some connection used up its budget and waits
        self.cancel_requests = 0
        self._resumed = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def resume(self) -> None:
        """Let every connection flow freely from now on."""
        self._resumed.set()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {client_w, server_w}
        pumps = {
            asyncio.create_task(self._from_client(client_r, server_w)),
            asyncio.create_task(self._from_server(server_r, client_w)),
        }
        self._tasks |= pumps
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_w, server_w):
                writer.close()
                self._writers.discard(writer)
            self._tasks -= pumps

    async def _from_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = b""  # a connection's first bytes: a cancel request comes alone (after an SSL probe)
        while chunk := await reader.read(65536):
            if len(head) < 64:
                head += chunk
                if _CANCEL_REQUEST in head[:64]:
                    self.cancel_requests += 1
            writer.write(chunk)
            await writer.drain()

    async def _from_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        budget = self.stall_after_bytes
        while chunk := await reader.read(65536):
            if not self._resumed.is_set() and len(chunk) >= budget:
                writer.write(chunk[:budget])
                await writer.drain()
                chunk = chunk[budget:]
                self.stalled.set()
                await self._resumed.wait()
            budget -= len(chunk)
            writer.write(chunk)
            await writer.drain()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()


@asynccontextmanager
async def stalling_proxy(
    upstream_port: int, *, stall_after_bytes: int
) -> AsyncIterator[StallingProxy]:
    """A ``StallingProxy`` listening on a free loopback port (``proxy.port``)."""
    proxy = StallingProxy(upstream_port, stall_after_bytes=stall_after_bytes)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = int(server.sockets[0].getsockname()[1])
    try:
        yield proxy
    finally:
        proxy.resume()
        server.close()
        await proxy.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
