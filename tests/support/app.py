"""Apps and servers over a models folder: settings for tests, an in-process TestClient, and
`python -m service` on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ROOT / "models"


# Every app's data folder lives under one folder removed when the test process exits.
_DATA_ROOT = tempfile.TemporaryDirectory(prefix="iis-test-data-")


def settings_for(models_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: load models before serving, one warm-up run, no .env file."""
    values: dict[str, object] = {
        "models_dir": models_dir,
        # a fresh face-gallery database per app, never the checkout's data/
        "data_dir": Path(tempfile.mkdtemp(prefix="app-", dir=_DATA_ROOT.name)),
        "background_load": False,
        "warmup_runs": 1,
        "intra_op_threads": 1,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@contextmanager
def serve(models_dir: Path, **overrides: object) -> Iterator[TestClient]:
    """A TestClient over create_app(); startup and shutdown (the lifespan) really run."""
    with TestClient(create_app(settings_for(models_dir, **overrides))) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(models_dir: Path, **env: str) -> Iterator[str]:
    """uvicorn in its own process on a free loopback port; yields its URL once /readyz is 200
    and stops it with SIGINT (as a container stop would) afterwards."""
    port = free_port()
    # a fresh face-gallery database per server (as settings_for), never the checkout's data/
    data = tempfile.TemporaryDirectory(prefix="iis-data-")
    environment = os.environ | {
        "IIS_MODELS_DIR": str(models_dir),
        "IIS_PORT": str(port),
        "IIS_HOST": "127.0.0.1",
        "IIS_LOG_LEVEL": "warning",
        "IIS_DATA_DIR": data.name,
        **env,
    }
    # a file, not a pipe: a pipe nobody reads fills up and blocks a server that logs a lot
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=environment,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log, seconds=60)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # graceful shutdown, as a container stop would
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("server did not shut down within 20 s of SIGINT")
        finally:
            log.close()
            data.cleanup()


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: IO[bytes], seconds: float) -> None:
    """Polls `url`/readyz until it answers 200; fails the test, with the server's log, if the
    process exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not is_ready(url):
        assert proc.poll() is None, tail(log)
        if time.monotonic() > deadline:
            pytest.fail(f"server did not become ready in {seconds:g} s: {tail(log)}")
        time.sleep(0.2)


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def tail(log: IO[bytes]) -> str:
    """The last 5000 characters the server wrote to its log file."""
    log.seek(0)
    return log.read().decode(errors="replace")[-5000:]
