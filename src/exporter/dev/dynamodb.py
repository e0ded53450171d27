"""AWS's DynamoDB Local on loopback, fetched offline from the npm registry; moto as fallback.

The npm package ``amplify-dynamodb-simulator`` carries ``DynamoDBLocal.jar`` and its native
libraries; ``npm pack`` downloads it without installing anything. Java runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from exporter.dev.ports import free_port, spawn_server, stop_process

NPM_PACKAGE = "amplify-dynamodb-simulator@2.9.30"


def cache_root() -> Path:
    return Path(os.environ.get("EXPORTER_DEV_CACHE", Path.home() / ".cache" / "exporter"))


def ensure_dynamodb_local(root: Path | None = None) -> Path:
    """The folder holding DynamoDBLocal.jar, downloading it once if needed."""
    target = (root or cache_root()) / "dynamodb-local"
    jar_dir = target / "package" / "emulator"
    if (jar_dir / "DynamoDBLocal.jar").exists():
        return jar_dir
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed once to fetch DynamoDB Local (apt-get install npm)")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        subprocess.run(  # noqa: S603 - fixed arguments
            [npm, "pack", NPM_PACKAGE, "--silent"],
            cwd=tmp,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as archive:
            archive.extractall(tmp, filter="data")
        staged = Path(tmp) / "package"
        final = target / "package"
        if not final.exists():
            staged.rename(final)
    return jar_dir


@dataclass
class LocalDynamo:
    """A running local DynamoDB endpoint; ``stop()`` ends it."""

    endpoint_url: str
    kind: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)


def start_dynamodb(
    port: int | None = None, *, log_path: Path | None = None, db_path: Path | None = None
) -> LocalDynamo:
    """Start DynamoDB Local (or moto's server if Java is missing) on 127.0.0.1.

    With ``db_path`` the data lives in that folder and survives a restart (fault tests stop
    and start the endpoint); otherwise it is in memory.
    """
    port = port or free_port()
    java = shutil.which("java")
    if java is not None:
        jar_dir = ensure_dynamodb_local()
        cmd = [
            java,
            "-Djava.library.path=./DynamoDBLocal_lib",
            "-jar",
            "DynamoDBLocal.jar",
            *(["-sharedDb", "-dbPath", str(db_path)] if db_path else ["-inMemory"]),
            "-port",
            str(port),
            "-disableTelemetry",
        ]
        kind, cwd = "dynamodb-local", str(jar_dir)
    else:
        warnings.warn(
            "Java not found: using moto's DynamoDB server, which is more lenient than AWS",
            RuntimeWarning,
            stacklevel=2,
        )
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        kind, cwd = "moto", None
    process = spawn_server(cmd, port, log_path=log_path, cwd=cwd)
    return LocalDynamo(endpoint_url=f"http://127.0.0.1:{port}", kind=kind, process=process)
