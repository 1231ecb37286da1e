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


class ServiceProcess:
    """`python -m service` in its own process on a free loopback port over a models folder:
    started, stopped (SIGINT, as a container stop would) or killed at will."""

    def __init__(self, models_dir: Path, env: dict[str, str], ready_seconds: float = 60) -> None:
        self.models_dir, self.env, self.ready_seconds = models_dir, env, ready_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        # a file, not a pipe: a pipe nobody reads fills up and blocks a server that logs a lot
        self.log = tempfile.TemporaryFile()

    def start(self) -> ServiceProcess:
        """Starts it and returns once /readyz is 200 (fails the test with its log if not)."""
        port = free_port()
        environment = os.environ | {
            "IIS_MODELS_DIR": str(self.models_dir),
            "IIS_PORT": str(port),
            "IIS_HOST": "127.0.0.1",
            "IIS_LOG_LEVEL": "warning",
            **self.env,
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=environment,
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(self.proc, self.url, self.log, seconds=self.ready_seconds)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what was committed must be all there is."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> bool:
        """SIGINT, then SIGKILL after 20 s; -> whether it shut down by itself."""
        graceful = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                graceful = False
        self.log.close()
        return graceful


def start_server(models_dir: Path, **env: str) -> Iterator[str]:
    """A ServiceProcess with its own fresh face-gallery folder (as settings_for, never the
    checkout's data/); yields its URL once ready and fails the test if SIGINT does not stop
    it within 20 s."""
    data = tempfile.TemporaryDirectory(prefix="iis-data-")
    server = ServiceProcess(models_dir, {"IIS_DATA_DIR": data.name, **env})
    try:
        yield server.start().url
    finally:
        graceful = server.stop()
        data.cleanup()
        if not graceful:
            pytest.fail("server did not shut down within 20 s of SIGINT")


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
