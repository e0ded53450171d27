"""An S3 endpoint on loopback for `make run`, `make demo` and the tests: moto's server.

moto answers put, multipart and presigned GETs like S3, but checks neither signatures nor
the expiry of signed URLs: the code's own expiry logic is tested without it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from exporter.dev.ports import free_port, spawn_server, stop_process


@dataclass
class LocalS3:
    """A running local S3 endpoint; ``stop()`` ends it."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)


def start_s3(port: int | None = None, *, log_path: Path | None = None) -> LocalS3:
    """Start moto's server on 127.0.0.1 (a separate process: no GIL shared with the tests)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = spawn_server(cmd, port, log_path=log_path)
    return LocalS3(endpoint_url=f"http://127.0.0.1:{port}", process=process)
