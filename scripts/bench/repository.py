"""The live model repository under a real server: memory over load/unload cycles, and reloads
under a steady stream of requests. JSON out.

    python -m scripts bench-repository --cycles 20 --out artifacts/repository.json

1. Memory: every default model unloaded and loaded again, `--cycles` times, through
   /v2/repository; the server's RSS after each cycle (the figure: last / first).
2. Reload under load: `--clients` threads keep posting one photo to /classify on the default
   classifier while version 2 is added beside version 1, then version 1 removed, then the
   other way round, `--swaps` times; every answer's status and model_version is counted.

The server runs on a copy of the models folder (the copy is what gets rearranged).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import psutil
from PIL import Image

from scripts.constants import ROOT

CLASSIFIER = "mobilenet_v2-imagenet"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _photo() -> bytes:
    try:
        import skimage.data

        image = Image.fromarray(skimage.data.chelsea())
    except ImportError:
        image = Image.new("RGB", (451, 300), (120, 90, 60))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _start(models: Path, port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "IIS_MODELS_DIR": str(models),
        "IIS_PORT": str(port),
        "IIS_MODEL_CONTROL": "explicit",
        "IIS_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 180 s")


def _post(http: httpx.Client, path: str) -> None:
    r = http.post(path, timeout=300)
    if r.status_code != 200:
        raise SystemExit(f"{path}: {r.status_code} {r.text}")


def memory_cycles(http: httpx.Client, proc: psutil.Process, names: list[str], cycles: int) -> dict:
    rss_mb = []
    started = time.perf_counter()
    for _ in range(cycles):
        for name in names:
            _post(http, f"/v2/repository/models/{name}/unload")
        for name in names:
            _post(http, f"/v2/repository/models/{name}/load")
        rss_mb.append(round(proc.memory_info().rss / 2**20, 1))
    return {
        "models": names,
        "cycles": cycles,
        "rss_mb_after_each_cycle": rss_mb,
        "rss_last_over_first": round(rss_mb[-1] / rss_mb[0], 4),
        "rss_max_over_first": round(max(rss_mb) / rss_mb[0], 4),
        "seconds_per_cycle": round((time.perf_counter() - started) / cycles, 2),
    }


def reload_under_load(http: httpx.Client, url: str, models: Path, clients: int, swaps: int) -> dict:
    folder = models / CLASSIFIER
    flat = folder / "model.onnx"
    if flat.exists():  # versioned layout: the flat folder becomes version 1
        tmp = models / f".{CLASSIFIER}.v1"
        folder.rename(tmp)
        folder.mkdir()
        tmp.rename(folder / "1")
    _post(http, f"/v2/repository/models/{CLASSIFIER}/load")
    photo = _photo()
    stop = threading.Event()
    lock = threading.Lock()
    answers: list[tuple[int, int, float]] = []

    def stream() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = client.post("/classify", files={"image": ("cat.jpg", photo)})
                ms = (time.perf_counter() - t0) * 1000
                version = r.json().get("model_version", -1) if r.status_code == 200 else -1
                with lock:
                    answers.append((r.status_code, version, ms))

    threads = [threading.Thread(target=stream) for _ in range(clients)]
    for t in threads:
        t.start()
    reloads = []
    try:
        time.sleep(1.0)
        current = 1
        for _ in range(swaps):
            new = 2 if current == 1 else 1
            t0 = time.perf_counter()
            shutil.copytree(folder / str(current), folder / f".{new}.tmp")
            (folder / f".{new}.tmp").rename(folder / str(new))
            _post(http, f"/v2/repository/models/{CLASSIFIER}/load")  # new beside old
            shutil.rmtree(folder / str(current))
            _post(http, f"/v2/repository/models/{CLASSIFIER}/load")  # old one retired
            reloads.append(round((time.perf_counter() - t0) * 1000, 1))
            current = new
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = Counter(str(s) for s, _, _ in answers)
    latencies = sorted(ms for _, _, ms in answers)
    return {
        "model": CLASSIFIER,
        "clients": clients,
        "swaps": swaps,
        "requests": len(answers),
        "statuses": dict(statuses),
        "failed": sum(1 for s, _, _ in answers if s != 200),
        "server_errors": sum(1 for s, _, _ in answers if s >= 500),
        "answers_by_version": dict(Counter(str(v) for _, v, _ in answers)),
        "swap_ms": reloads,
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
            "max": round(latencies[-1], 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "repository.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-repository-"))
    try:
        models = work / "models"
        shutil.copytree(args.models, models, ignore=shutil.ignore_patterns(".*", "*.log"))
        names = sorted(p.name for p in models.iterdir() if (p / "model.json").is_file())
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = _start(models, port)
        try:
            with httpx.Client(base_url=url) as http:
                result = {
                    "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                    "memory": memory_cycles(http, psutil.Process(server.pid), names, args.cycles),
                    "reload_under_load": reload_under_load(
                        http, url, models, args.clients, args.swaps
                    ),
                }
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0
