"""A real API process (``exporter api``, the production server setup) and a raw HTTP/1.1
client that sends exactly the bytes it is given, for the hostile-input tests."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.config import Settings
from exporter.dev.ports import free_port
from tests.test_fuzz import api_environment

BIN = Path(sys.executable).parent


@dataclass
class LiveApi:
    host: str
    port: int
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        """The process's log so far, one JSON object per line (non-JSON lines as text)."""
        lines: list[dict[str, Any]] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"event": raw, "level": "text"})
        return lines


@contextlib.contextmanager
def running_api(
    settings: Settings, log_path: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[LiveApi]:
    """``exporter api`` on a free loopback port until the block ends (SIGTERM)."""
    port = free_port()
    env = api_environment(settings)
    env.update({"EXPORTER_LOG_LEVEL": "INFO", **(extra_env or {})})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "exporter"), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/healthz", timeout=1
                    ) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(log_path.read_text()) from None
                    time.sleep(0.1)
            yield LiveApi("127.0.0.1", port, log_path)
        finally:
            process.terminate()
            process.wait(timeout=30)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


def _parse(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        body = body[: int(length)]
    return RawResponse(status, headers, body, raw)


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def exchange(
    api: LiveApi,
    chunks: bytes | list[bytes],
    *,
    pause_s: float = 0.0,
    timeout_s: float = 10.0,
    close_after_send: bool = False,
) -> RawResponse | None:
    """Send ``chunks`` (``pause_s`` apart), read one response. None if the server closed
    the connection without answering (or ``close_after_send``: we hung up first)."""
    parts = [chunks] if isinstance(chunks, bytes) else chunks
    with socket.create_connection((api.host, api.port), timeout=timeout_s) as sock:
        try:
            for i, part in enumerate(parts):
                if i and pause_s:
                    readable, _, _ = select.select([sock], [], [], pause_s)
                    if readable:
                        break  # the server answered (or closed) before we were done
                sock.sendall(part)
        except OSError:
            pass  # the server may answer and close before we are done sending
        if close_after_send:
            return None
        raw = b""
        while not _complete(raw):
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            raw += data
    return _parse(raw) if raw else None


def request_bytes(
    method: str,
    target: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    extra_head: bytes = b"",
) -> bytes:
    """An HTTP/1.1 request, Host and Content-Length (unless chunked) filled in unless given."""
    all_headers = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if body and not {"Content-Length", "Transfer-Encoding"} & set(all_headers):
        all_headers["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode("utf-8", "surrogateescape") for k, v in all_headers.items()
    )
    return head + extra_head + b"\r\n" + body
