"""An S3 endpoint on loopback for `make run`, `make demo` and the tests: moto's server.

moto answers put, multipart and presigned GETs like S3, but checks neither signatures nor
the expiry of signed URLs: the code's own expiry logic is tested without it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from exporter.dev.ports import free_port, wait_for_port


@dataclass
class LocalS3:
    """A running local S3 endpoint; ``stop()`` ends it."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3(port: int | None = None, *, log_path: Path | None = None) -> LocalS3:
    """Start moto's server on 127.0.0.1 (a separate process: no GIL shared with the tests)."""
    port = port or free_port()
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    try:
        process = subprocess.Popen(cmd, stdout=out, stderr=out)  # noqa: S603
    finally:
        if not isinstance(out, int):
            out.close()
    try:
        wait_for_port(port, timeout_s=60)
    except TimeoutError:
        process.kill()
        raise
    return LocalS3(endpoint_url=f"http://127.0.0.1:{port}", process=process)
