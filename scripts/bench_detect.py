"""Single-client /detect latency vs a bare onnxruntime `session.run` + postprocess, same photo.

    python scripts/bench_detect.py --image ~/.cache/image-inference-service/testdata/dog.jpg \
        --requests 100 --out artifacts/bench_detect.json

Starts the service on a free loopback port (models from --models) and, in this process, opens
a bare session with the same thread count. Each round sends one HTTP request, then times
`session.run` alone, `session.run` + postprocess (thresholds, NMS, letterbox undo), and decode +
preprocess + run + postprocess: interleaved, so all see the same background load. Prints and
writes JSON with p50/p95/p99 in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench_latency import rss_mb, summary  # noqa: E402


def bare_steps(
    models: Path, name: str, photo: bytes, threads: int
) -> dict[str, Callable[[], object]]:
    """The three in-process measurements, each a callable doing one run."""
    import onnxruntime as ort

    from service.cards import read_card
    from service.images import decode
    from service.routes.common import needed_side
    from service.tasks.detect import DetectOptions, layout_of, postprocess, preprocess

    loaded = read_card(models / name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(loaded.onnx_path), options, providers=["CPUExecutionProvider"]
    )
    feed = session.get_inputs()[0].name
    layout, detect = layout_of(loaded.card), DetectOptions()
    side = needed_side(loaded.card)
    tensor, geometries = preprocess(
        [decode(photo, max_pixels=40_000_000, min_side=side)], loaded.card
    )

    def run() -> object:
        return session.run(None, {feed: tensor})

    def run_postprocess() -> object:
        (out,) = session.run(None, {feed: tensor})
        return postprocess(out, geometries, detect, layout)

    def everything() -> object:
        batch, geo = preprocess([decode(photo, max_pixels=40_000_000, min_side=side)], loaded.card)
        (out,) = session.run(None, {feed: batch})
        return postprocess(out, geo, detect, layout)

    for _ in range(5):
        everything()
    return {
        "session_run_ms": run,
        "session_run_postprocess_ms": run_postprocess,
        "decode_preprocess_run_postprocess_ms": everything,
    }


def main(argv: list[str] | None = None) -> int:
    import httpx2 as httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="yolov3-tiny-coco")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args(argv)
    photo = args.image.read_bytes()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {
        "IIS_MODELS_DIR": str(args.models),
        "IIS_PORT": str(port),
        "IIS_HOST": "127.0.0.1",
        "IIS_LOG_LEVEL": "warning",
        "IIS_INTRA_OP_THREADS": str(args.threads),
    }
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    deadline = time.monotonic() + args.time_limit
    endpoint = f"/detect?model={args.model}"
    bare = bare_steps(args.models, args.model, photo, args.threads)
    times: dict[str, list[float]] = {k: [] for k in ["client_http_ms", *bare]}
    server_total, steps = [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
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
            for _ in range(10):  # warm-up
                client.post(endpoint, files=files).raise_for_status()
            for _ in range(args.requests):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                r = client.post(endpoint, files=files)
                times["client_http_ms"].append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                server_total.append(r.json()["timing_ms"]["total"])
                steps.append(r.json()["timing_ms"])
                for key, fn in bare.items():
                    t0 = time.perf_counter()
                    fn()
                    times[key].append((time.perf_counter() - t0) * 1000)
            detections = len(r.json()["detections"])
            rss = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)

    result: dict[str, object] = {
        "endpoint": "/detect",
        "model": args.model,
        "image": args.image.name,
        "detections": detections,
        "threads": args.threads,
        "server_timing_total_ms": summary(server_total),
        "server_steps_p50_ms": {
            k: summary([s[k] for s in steps if k in s])["p50"] for k in steps[0] if k != "total"
        },
        **{key: summary(values) for key, values in times.items()},
        "server_rss_mb": round(rss, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    http_p50 = summary(times["client_http_ms"])["p50"]
    result["ratio_http_p50_to_run_postprocess_p50"] = round(
        http_p50 / summary(times["session_run_postprocess_ms"])["p50"], 2
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
