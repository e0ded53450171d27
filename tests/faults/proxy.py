"""A TCP proxy on a fixed loopback port that can be switched off (connections refused, open
ones cut) and on again: a dependency's outage, for a worker process that keeps its settings."""

from __future__ import annotations

import asyncio
import contextlib

from exporter.dev.ports import free_port


class SwitchableProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` while up."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Refuse new connections and cut the open ones, as a crashed service does."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(_pump(client_r, server_w), _pump(server_r, client_w))
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write_eof()
