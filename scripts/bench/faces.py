"""Single-client /verify-faces latency vs the same pipeline on bare onnxruntime sessions.

    python -m scripts bench-faces --a obama.jpg --b obama2.jpg --requests 50 \
        --out artifacts/bench_faces.json

Starts the service on a free loopback port over only the face models (linked from --models
into a temp folder), sends --requests sequential requests, then times in this process, with
the same thread count: decode both + detect both + align + one batched embedding run. Prints
and writes JSON with p50/p95/p99 in ms and the median of each server-side timing step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from scripts.bench import kit as benchkit
from scripts.bench.kit import summary
from scripts.constants import ROOT, service_max_pixels


def bare_pipeline(models: Path, det: str, emb: str, photos: list[bytes], n: int, threads: int):
    import onnxruntime as ort

    from service.cards import read_card
    from service.images import decode
    from service.tasks import faces as F

    def session(path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    d, e = read_card(models / det), read_card(models / emb)
    sd, se = session(d.onnx_path), session(e.onnx_path)
    names = [o.name for o in sd.get_outputs()]
    det_settings, emb_settings = (
        F.DetectorSettings.from_card(d.card),
        F.EmbedderSettings.from_card(e.card),
    )
    side = max(d.card.preprocess.size or (640, 640))

    def once() -> float:
        crops = []
        for data in photos:
            image = decode(data, max_pixels=service_max_pixels(), min_side=side)
            tensor, geometry = F.detect_preprocess(image, d.card.preprocess)
            outs = dict(zip(names, (o[0] for o in sd.run(None, {"input": tensor})), strict=True))
            found = F.detect_postprocess(outs, tensor.shape[2:4], geometry, det_settings)
            marks = found.landmarks[F.largest(found)] / image.scale
            crops.append(F.align(image.pixels, marks, emb_settings.template, emb_settings.size))
        (vectors,) = se.run(
            None, {se.get_inputs()[0].name: F.embed_preprocess(crops, e.card.preprocess)}
        )
        return F.cosine_similarity(vectors[0], vectors[1])

    for _ in range(3):
        once()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        similarity = once()
        times.append((time.perf_counter() - t0) * 1000)
    return {"bare_pipeline_ms": summary(times), "bare_similarity": round(similarity, 6)}


def main(argv: list[str] | None = None) -> int:
    import httpx2 as httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True)
    parser.add_argument("--b", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--detector", default="yunet-2023mar")
    parser.add_argument("--embedder", default="sface-2021dec")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args(argv)
    photos = [args.a.read_bytes(), args.b.read_bytes()]

    port = benchkit.free_port()
    linked = Path(tempfile.mkdtemp(prefix="bench-faces-"))
    for name in (args.detector, args.embedder):
        (linked / name).symlink_to((args.models / name).resolve(), target_is_directory=True)
    env = benchkit.service_env(linked, port, args.threads)
    deadline = time.monotonic() + args.time_limit
    files = {
        "image_a": (args.a.name, photos[0], "image/jpeg"),
        "image_b": (args.b.name, photos[1], "image/jpeg"),
    }
    try:
        with (
            benchkit.serve(
                benchkit.service_argv(),
                port=port,
                ready_path="/readyz",
                env=env,
                timeout=args.time_limit,
            ) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            for _ in range(5):
                client.post("/verify-faces", files=files).raise_for_status()
            http_ms, steps, body = [], {}, {}
            for _ in range(args.requests):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                r = client.post("/verify-faces", files=files)
                http_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                body = r.json()
                for k, v in body["timing_ms"].items():
                    steps.setdefault(k, []).append(v)
            rss = server.rss_mb()
    finally:
        shutil.rmtree(linked, ignore_errors=True)

    result = {
        "endpoint": "/verify-faces",
        "images": [args.a.name, args.b.name],
        "threads": args.threads,
        "similarity": body.get("similarity"),
        "verified": body.get("verified"),
        "client_http_ms": summary(http_ms),
        "server_steps_median_ms": {k: round(statistics.median(v), 3) for k, v in steps.items()},
        **bare_pipeline(
            args.models, args.detector, args.embedder, photos, args.requests, args.threads
        ),
        "server_rss_mb": round(rss, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0
