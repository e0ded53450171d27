"""Loopback ports: find a free one, wait for one to answer."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, *, timeout_s: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s:.0f}s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spawn_server(
    cmd: list[str], port: int, *, log_path: Path | None, cwd: str | None = None
) -> subprocess.Popen[bytes]:
    """Start a local server process and wait (60 s at most) until it listens on ``port``."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=out)  # noqa: S603
    finally:
        if not isinstance(out, int):
            out.close()  # the child holds its own copy of the descriptor
    try:
        wait_for_port(port, timeout_s=60)
    except TimeoutError:
        process.kill()
        raise
    return process
