"""MLflow on a tracking server backed by PostgreSQL: `polydistill tracking start` (`make mlflow-server`).

PostgreSQL comes from pgserver, a PostgreSQL build inside a wheel (pip only: no system package, no service), with
its data in `<tracking_server.data_dir>/postgres` and reached over a Unix socket in that folder, never a TCP port.
PostgreSQL refuses to run as root, so when started by root pgserver creates a `pgserver` system user (with
`useradd`: /usr/sbin and /sbin are added to a PATH that lacks them) and hands it the data folder. `mlflow server`
keeps runs and the model registry in that database and stores and serves the artifacts itself
(`--artifacts-destination`), bound to 127.0.0.1. Clients then set
MLFLOW_TRACKING_URI=http://127.0.0.1:<port> (or `registry.tracking_uri`); everything else works unchanged. The
registry lock for such a URI is a file lock per URI in the temp folder: it serialises promotions on this host.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
SYSTEM_BIN_DIRS = ("/usr/sbin", "/sbin")  # where useradd lives


@dataclass(frozen=True)
class TrackingServerSettings:
    """The tracking_server section of params.yaml."""

    host: str
    port: int
    data_dir: str
    database: str
    workers: int
    start_timeout_s: float

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> TrackingServerSettings:
        settings = cls(**{name: section[name] for name in cls.__dataclass_fields__})
        if not DATABASE_NAME.match(settings.database):
            raise ValueError(f"tracking_server.database '{settings.database}' must match {DATABASE_NAME.pattern}")
        return settings


@dataclass(frozen=True)
class RunningServer:
    url: str
    process: subprocess.Popen


def start_database(data_dir: Path, database: str) -> tuple[Any, str]:
    """The PostgreSQL server of data_dir (started unless running) with `database` created; its SQLAlchemy URI."""
    import pgserver

    if os.geteuid() == 0:
        add_system_bin_dirs_to_path()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    if "(0 rows)" in server.psql(f"SELECT datname FROM pg_database WHERE datname = '{database}';"):
        server.psql(f"CREATE DATABASE {database};")
    return server, server.get_uri(database).replace("postgresql://", "postgresql+psycopg2://", 1)  # the pinned driver


def add_system_bin_dirs_to_path() -> None:
    """Append /usr/sbin and /sbin to PATH where missing: root's pgserver runs `useradd` from PATH, and a minimal
    PATH (`env -i`, cron) lacks them."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([*path, *(folder for folder in SYSTEM_BIN_DIRS if folder not in path)])


def server_command(backend_uri: str, artifacts: Path, settings: TrackingServerSettings) -> list[str]:
    return [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend_uri,
            "--artifacts-destination", str(artifacts), "--host", settings.host, "--port", str(settings.port),
            "--workers", str(settings.workers)]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Return once GET <url>/health answers; raise if the server exits or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    raise TimeoutError(f"mlflow server at {url} did not answer within {timeout_s} s")


@contextmanager
def tracking_server(root: Path, settings: TrackingServerSettings) -> Iterator[RunningServer]:
    """PostgreSQL and `mlflow server` running (artifacts under data_dir/artifacts); both stopped on exit."""
    data_dir = (root / settings.data_dir).resolve()
    database, backend_uri = start_database(data_dir / "postgres", settings.database)
    process = None
    try:
        process = subprocess.Popen(server_command(backend_uri, data_dir / "artifacts", settings))
        url = f"http://{settings.host}:{settings.port}"
        wait_until_healthy(url, process, settings.start_timeout_s)
        yield RunningServer(url, process)
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        database.cleanup()
