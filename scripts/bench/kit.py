"""What every benchmark in scripts/ shares: loopback ports, servers started and stopped by the
benchmark itself, resident memory of a whole process tree, percentiles, and an async load
driver that keeps N requests in flight.

Only the standard library at import time; psutil and aiohttp are imported by the functions
that need them (both come with the `dev` extra).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.constants import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cores() -> int:
    return len(os.sched_getaffinity(0))


def rss_mb(pid: int, *, tree: bool = True) -> float:
    """Resident memory of `pid` (and, with `tree`, of all its descendants: LitServe and
    multi-worker servers run inference in child processes), in MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if tree else [])]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by `pid` and all its descendants, in seconds."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for p in procs:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes), from
    /proc/stat; NaN where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return (sum(fields[:8]) - idle - steal) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """p50/p95/p99 and count of latencies (any unit)."""
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "n": 0}
    return {
        "p50": round(statistics.median(values), digits),
        "p95": round(percentile(values, 0.95), digits),
        "p99": round(percentile(values, 0.99), digits),
        "n": len(values),
    }


@dataclass
class Server:
    """A server process the benchmark started; `url` is its loopback base URL."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def pause(self) -> None:
        """SIGSTOP the server's process group: an idle server still spends CPU (LitServe's
        workers poll: 10% of a core here) that would go missing from another's measurement."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float, log: Path | None
) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {process.returncode} before ready:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGINT the server's process group (uvicorn drains), then SIGKILL what is left."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGCONT)  # a paused server cannot drain
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children a framework forgot to reap
    except ProcessLookupError:
        pass
    process.wait(timeout=grace)


@contextmanager
def serve(
    argv: Sequence[str],
    *,
    port: int,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 180.0,
    log: Path | None = None,
    cwd: Path = ROOT,
) -> Iterator[Server]:
    """Start `argv` (in its own process group), wait until GET ready_path answers 200, yield,
    stop it. Output goes to `log` (or is discarded)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + ready_path, process, timeout, log)
        yield Server(process, url, log)
    finally:
        stop(process)
        if log:
            out.close()  # type: ignore[union-attr]


def service_argv() -> list[str]:
    return [sys.executable, "-m", "service"]


def service_env(models_dir: Path, port: int, threads: int, **extra: str) -> dict[str, str]:
    """Environment for `python -m service` on loopback with quiet logs."""
    env = {
        "IIS_MODELS_DIR": str(models_dir),
        "IIS_HOST": "127.0.0.1",
        "IIS_PORT": str(port),
        "IIS_LOG_LEVEL": "warning",
        "IIS_INTRA_OP_THREADS": str(threads),
        "IIS_BACKGROUND_LOAD": "false",
    }
    env.update({k.upper(): v for k, v in extra.items()})
    return env


@dataclass
class LoadResult:
    """What a load run measured: latencies (ms) of the requests that answered 200, the wall
    time of the measured phase, and the statuses of the rest."""

    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    first_body: Any = None
    server_ms: list[float] = field(default_factory=list)  # the answers' timing_ms.total

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests_ok": self.ok,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 2),
            "latency_ms": summary(self.latencies_ms),
            "non_200": {k: v for k, v in self.statuses.items() if k != "200"},
            **({"server_total_ms": summary(self.server_ms)} if self.server_ms else {}),
        }


Send = Callable[[Any], Awaitable[tuple[int, Any]]]
# concurrency -> the client `send` is given (an aiohttp session, a tritonclient, ...)
OpenClient = Callable[[int], AbstractAsyncContextManager[Any]]


def aiohttp_session(concurrency: int) -> AbstractAsyncContextManager[Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def drive(
    send: Send,
    *,
    concurrency: int,
    requests: int,
    seconds: float,
    warmup: int = 0,
    client: OpenClient = aiohttp_session,
) -> LoadResult:
    """Keep `concurrency` requests in flight until `requests` have finished or `seconds` have
    passed, after `warmup` unmeasured requests. `send(session)` performs one request with the
    client that `client(concurrency)` opens and returns (status, parsed body or None)."""
    result = LoadResult()
    async with client(concurrency) as session:
        left = warmup

        async def warm() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await send(session)

        await asyncio.gather(*(warm() for _ in range(concurrency)))
        remaining = requests
        started = time.perf_counter()
        stop_at = started + seconds

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.perf_counter() < stop_at:
                remaining -= 1
                t0 = time.perf_counter()
                status, body = await send(session)
                elapsed = (time.perf_counter() - t0) * 1000
                key = str(status)
                result.statuses[key] = result.statuses.get(key, 0) + 1
                if status == 200:
                    result.latencies_ms.append(elapsed)
                    if isinstance(body, dict) and isinstance(body.get("timing_ms"), dict):
                        result.server_ms.append(float(body["timing_ms"].get("total", 0.0)))
                    if result.first_body is None:
                        result.first_body = body

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def multipart_sender(
    url: str, field_name: str, filename: str, data: bytes, content_type: str = "image/jpeg"
) -> Send:
    """A `send` for drive(): POST one file as multipart/form-data, parse the JSON answer."""
    import aiohttp

    async def send(session: aiohttp.ClientSession) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field(field_name, data, filename=filename, content_type=content_type)
        async with session.post(url, data=form) as r:
            body = await r.read()
            return r.status, (json.loads(body) if r.status == 200 else None)

    return send


def rate_at_once(url: str, data: bytes, *, concurrency: int, requests: int) -> float:
    """Photos/s when `concurrency` clients keep POSTing `data` (multipart field "image") to
    `url` until `requests` have answered; an answer other than 200 raises."""
    result = asyncio.run(
        drive(
            multipart_sender(url, "image", "photo.jpg", data),
            concurrency=concurrency,
            requests=requests,
            seconds=math.inf,
        )
    )
    if set(result.statuses) != {"200"}:
        raise RuntimeError(f"{url}: answers other than 200: {result.statuses}")
    return result.throughput


def json_image_sender(url: str, data: bytes, field_name: str = "image") -> Send:
    """A `send` for drive(): POST {"image": base64(data)} as JSON, parse the JSON answer."""
    import base64

    import aiohttp

    body = json.dumps({field_name: base64.b64encode(data).decode("ascii")}).encode()
    headers = {"Content-Type": "application/json"}

    async def send(session: aiohttp.ClientSession) -> tuple[int, Any]:
        async with session.post(url, data=body, headers=headers) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if r.status == 200 else None)

    return send


def triton_client(url: str) -> OpenClient:
    """`client` for drive(): tritonclient.http's asyncio client on `url`, one connection per
    request in flight."""

    def open_client(concurrency: int) -> AbstractAsyncContextManager[Any]:
        from tritonclient.http.aio import InferenceServerClient

        host = url.split("://", 1)[-1]
        return InferenceServerClient(host, conn_limit=concurrency, conn_timeout=120.0)  # type: ignore[no-any-return]

    return open_client


def oip_image_sender(model: str, data: bytes, *, base64_encode: bool = False) -> Send:
    """A `send` for drive() with triton_client(): one encoded image as the Open Inference
    Protocol `BYTES` input "image" (binary extension, as tritonclient sends by default), top
    labels and scores back as binary outputs, parsed into {"predictions": [{label, score}]}.
    `base64_encode`: send the image base64-encoded (for servers that take only UTF-8 BYTES)."""
    import base64

    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    payload = base64.b64encode(data) if base64_encode else data

    async def send(client: Any) -> tuple[int, Any]:
        image = th.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([payload], dtype=object))
        outputs = [th.InferRequestedOutput(n, binary_data=True) for n in ("labels", "scores")]
        try:
            result = await client.infer(model, [image], outputs=outputs)
        except InferenceServerException as exc:
            status = exc.status()
            return (int(status) if status and str(status).isdigit() else 0), None
        labels, scores = result.as_numpy("labels")[0], result.as_numpy("scores")[0]
        predictions = [
            {"label": label.decode(), "score": float(score)}
            for label, score in zip(labels, scores, strict=True)
        ]
        return 200, {"predictions": predictions}

    return send
