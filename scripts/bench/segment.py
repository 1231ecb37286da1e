"""/segment latency against a bare onnxruntime `session.run` on the same photo.

    python -m scripts bench-segment --models models --name shapes-maskrcnn-mobilenet_v2 \
        --image photo.jpg --size 640 480 --requests 30

Starts the service on a free loopback port with only that model, sends --requests sequential
requests (RLE masks), then --requests from --concurrency clients at once (images/s both
ways), and times in this process, with the server's thread count:
`session.run` on the full-size tensor (the graph resizes), `session.run` on the tensor the
service feeds (shrunk to the graph's size first), and that plus the numpy post-processing.
Prints medians in ms as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from scripts.constants import ROOT, service_max_pixels


def bare(folder: Path, photo: bytes, n: int, threads: int) -> dict[str, float]:
    import onnxruntime as ort

    from service.cards import read_card
    from service.images import decode
    from service.tasks.segment import GraphResize, SegmentOptions, postprocess, preprocess

    loaded = read_card(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(loaded.onnx_path), options, providers=["CPUExecutionProvider"]
    )
    image = decode(photo, max_pixels=service_max_pixels())
    full = image.pixels.transpose(2, 0, 1)[None].astype("float32") / 255
    tensor, geometry = preprocess(image, GraphResize.of(loaded.card))
    times: dict[str, list[float]] = {"run_full_size": [], "run_service_tensor": [], "run+post": []}
    for _ in range(2):
        session.run(None, {"images": full})
        session.run(None, {"images": tensor})
    for _ in range(n):
        t = time.perf_counter()
        session.run(None, {"images": full})
        times["run_full_size"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        outputs = session.run(None, {"images": tensor})
        times["run_service_tensor"].append((time.perf_counter() - t) * 1000)
        postprocess(outputs, geometry, SegmentOptions())
        times["run+post"].append((time.perf_counter() - t) * 1000)
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def served(folder: Path, photo: bytes, n: int, threads: int, concurrency: int) -> dict[str, float]:
    import httpx2 as httpx

    from scripts.bench import kit as benchkit

    port = benchkit.free_port()
    with tempfile.TemporaryDirectory() as models:
        (Path(models) / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        env = benchkit.service_env(Path(models), port, threads)
        with benchkit.serve(
            benchkit.service_argv(), port=port, ready_path="/readyz", env=env, timeout=120
        ) as server:
            files = {"image": ("photo.jpg", photo, "image/jpeg")}
            latencies, inference, found = [], [], 0
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for i in range(n + 2):
                    if i == 2:  # after two warm-up requests
                        started = time.perf_counter()
                    t = time.perf_counter()
                    r = client.post("/segment", files=files)
                    r.raise_for_status()
                    if i >= 2:
                        latencies.append((time.perf_counter() - t) * 1000)
                        inference.append(r.json()["timing_ms"]["inference"])
                        found = len(r.json()["instances"])
                sequential = n / (time.perf_counter() - started)

            at_once = benchkit.rate_at_once(
                f"{server.url}/segment", photo, concurrency=concurrency, requests=n
            )
            return {
                "http_p50": round(statistics.median(latencies), 1),
                "server_inference_p50": round(statistics.median(inference), 1),
                "instances": found,
                "images_per_s": round(sequential, 2),
                f"images_per_s_c{concurrency}": round(at_once, 2),
            }


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--name", required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--concurrency", type=int, default=4, help="clients at once (throughput)")
    args = parser.parse_args(argv)
    with Image.open(args.image) as img:
        buffer = io.BytesIO()
        img.convert("RGB").resize(tuple(args.size)).save(buffer, "JPEG", quality=90)
    photo = buffer.getvalue()
    folder = args.models / args.name
    result = {
        "model": args.name,
        "image": f"{args.size[0]}x{args.size[1]}",
        "threads": args.threads,
        "onnx_mb": round((folder / "model.onnx").stat().st_size / 1e6, 1),
        **bare(folder, photo, args.requests, args.threads),
        **served(folder, photo, args.requests, args.threads, args.concurrency),
    }
    print(json.dumps(result))
