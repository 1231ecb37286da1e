"""Single-client latency of one endpoint vs a bare onnxruntime `session.run`, side by side.

    python scripts/bench_latency.py --image cat.jpg --requests 100 --out artifacts/bench.json

Starts the service itself on a free loopback port (models from --models), sends --requests
sequential requests of the same photo, and, in this process, times `session.run` alone and
decode + preprocess + run on the same photo with the same thread count. Bounded: loopback only,
a fixed number of requests, and a time limit. Prints and writes JSON with medians (ms) and the
serving process's RSS after warm-up and after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "p95": round(percentile(values, 0.95), 3),
        "p99": round(percentile(values, 0.99), 3),
        "n": len(values),
    }


def bare_runs(models: Path, name: str, photo: bytes, n: int, threads: int) -> dict[str, object]:
    import onnxruntime as ort

    from service.cards import read_card
    from service.images import decode
    from service.routes.common import needed_side
    from service.tasks.classify import preprocess

    loaded = read_card(models / name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(loaded.onnx_path), options,
                                   providers=["CPUExecutionProvider"])
    image = decode(photo, max_pixels=40_000_000, min_side=needed_side(loaded.card))
    tensor = preprocess([image], loaded.card)
    for _ in range(5):
        session.run(None, {"input": tensor})
    run_only, full = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, {"input": tensor})
        run_only.append((time.perf_counter() - t0) * 1000)
    for _ in range(n):
        t0 = time.perf_counter()
        img = decode(photo, max_pixels=40_000_000, min_side=needed_side(loaded.card))
        session.run(None, {"input": preprocess([img], loaded.card)})
        full.append((time.perf_counter() - t0) * 1000)
    return {"session_run_ms": summary(run_only), "decode_preprocess_run_ms": summary(full)}


def main(argv: list[str] | None = None) -> int:
    import httpx2 as httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mobilenet_v2-imagenet")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args(argv)
    photo = args.image.read_bytes()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"IIS_MODELS_DIR": str(args.models), "IIS_PORT": str(port),
                        "IIS_HOST": "127.0.0.1", "IIS_LOG_LEVEL": "warning",
                        "IIS_INTRA_OP_THREADS": str(args.threads)}
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.time_limit
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("server did not become ready")
                time.sleep(0.2)
            files = {"image": (args.image.name, photo, "application/octet-stream")}
            endpoint = f"/classify?model={args.model}"
            for _ in range(10):  # warm-up: first requests pay for lazy allocations
                client.post(endpoint, files=files).raise_for_status()
            rss_warm = rss_mb(server.pid)
            http_ms, server_total = [], []
            for _ in range(args.requests):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                r = client.post(endpoint, files=files)
                http_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                server_total.append(r.json()["timing_ms"]["total"])
            rss_after = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)

    result = {
        "endpoint": "/classify",
        "model": args.model,
        "image": args.image.name,
        "threads": args.threads,
        "client_http_ms": summary(http_ms),
        "server_timing_total_ms": summary(server_total),
        **bare_runs(args.models, args.model, photo, args.requests, args.threads),
        "server_rss_mb": {"after_warmup": round(rss_warm, 1), "after_run": round(rss_after, 1)},
    }
    bare = result["session_run_ms"]["p50"]  # type: ignore[index]
    result["ratio_http_p50_to_session_run_p50"] = round(result["client_http_ms"]["p50"] / bare, 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
