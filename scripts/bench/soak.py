"""Soak test: mixed good and bad requests against every endpoint, at fixed concurrency, for a
fixed time, on loopback only. Reports 5xx count, statuses and the server's RSS over time.

    python -m scripts soak --minutes 10 --concurrency 8 --out artifacts/soak.json

Starts the service itself (default models from --models) on a free 127.0.0.1 port and stops
it at the end. Bounded: the run stops after --minutes, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.bench import kit as benchkit
from scripts.bench.kit import rss_mb
from scripts.constants import ROOT


def _jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def payloads(face: bytes, photo: bytes) -> dict[str, list[tuple[str, dict[str, bytes], bool]]]:
    """endpoint -> [(query, files, good)]: good ones must answer 200, bad ones 4xx."""
    rng = np.random.default_rng(0)
    noise = _jpeg(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    bad_images = [
        b"",
        b"not an image at all",
        b"%PDF-1.4\n%",
        b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
        photo[: len(photo) // 3],  # truncated JPEG
        bytes(rng.integers(0, 256, 5000, dtype=np.uint8)),
    ]
    single = [("", {"image": photo}, True), ("", {"image": noise}, True)]
    single += [("", {"image": b}, False) for b in bad_images]
    return {
        "/classify": single + [("?top_k=0", {"image": photo}, False)],
        "/detect": single + [("?score_threshold=2", {"image": photo}, False)],
        "/segment": single + [("?mask_format=svg", {"image": photo}, False)],
        "/verify-faces": [
            ("", {"image_a": face, "image_b": face}, True),
            ("", {"image_a": face}, False),
            ("", {"image_a": face, "image_b": noise}, False),  # no face in b
            ("", {"image_a": face, "image_b": bad_images[1]}, False),
        ],
    }


async def run(
    url: str, pid: int, endpoints: list[str], args: argparse.Namespace, face: bytes, photo: bytes
) -> dict[str, object]:
    import httpx2 as httpx

    cases = payloads(face, photo)
    work = [(ep, case) for ep in endpoints for case in cases.get(ep, [])]
    statuses: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    latencies: list[float] = []
    rss: list[tuple[float, float]] = []
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    rnd = random.Random(0)

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            endpoint, (query, files, good) = rnd.choice(work)
            form = {k: (k + ".jpg", v, "image/jpeg") for k, v in files.items()}
            t0 = time.perf_counter()
            try:
                r = await client.post(endpoint + query, files=form)
                status = r.status_code
            except httpx.HTTPError as exc:
                status = 0
                wrong[f"{endpoint} transport {type(exc).__name__}"] += 1
            latencies.append(time.perf_counter() - t0)
            statuses[f"{endpoint} {status}"] += 1
            if status >= 500 or (good and status != 200) or (not good and not 400 <= status < 500):
                wrong[f"{endpoint}{query} good={good} -> {status}"] += 1

    async def sampler() -> None:
        while time.monotonic() < deadline:
            rss.append((round(time.monotonic() - started, 1), rss_mb(pid)))
            await asyncio.sleep(5)

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(sampler(), *(worker(client) for _ in range(args.concurrency)))

    after_first_minute = [m for t, m in rss if t >= min(60.0, args.minutes * 60 / 2)]
    baseline = after_first_minute[0] if after_first_minute else rss[0][1]
    final = rss_mb(pid)
    lat = sorted(latencies)
    return {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "endpoints": endpoints,
        "requests": len(latencies),
        "server_errors_5xx": sum(n for k, n in statuses.items() if k.split()[-1].startswith("5")),
        "unexpected": dict(wrong),
        "statuses": dict(sorted(statuses.items())),
        "latency_ms": {
            "p50": round(lat[len(lat) // 2] * 1000, 1),
            "p99": round(lat[int(len(lat) * 0.99)] * 1000, 1),
        },
        "rss_mb": {
            "baseline_after_first_minute": baseline,
            "final": final,
            "growth_pct": round((final - baseline) / baseline * 100, 2),
            "samples": rss,
        },
    }


def main(argv: list[str] | None = None) -> int:
    import httpx2 as httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--face", type=Path, help="a photo with one face (default: test data)")
    parser.add_argument("--photo", type=Path, help="any photo (default: scikit-image's cat)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from scripts.recipes.defaults import testdata_path

    face = (args.face or testdata_path("obama.jpg")).read_bytes()
    if args.photo:
        photo = args.photo.read_bytes()
    else:
        import skimage.data

        photo = _jpeg(skimage.data.chelsea())

    port = benchkit.free_port()
    env = benchkit.service_env(args.models, port, benchkit.cores())
    with benchkit.serve(
        benchkit.service_argv(), port=port, ready_path="/readyz", env=env, timeout=300
    ) as server:
        defaults = httpx.get(f"{server.url}/v1/models").json()["defaults"]
        task_endpoint = {
            "classify": "/classify",
            "detect": "/detect",
            "segment": "/segment",
            "face-embed": "/verify-faces",
        }
        endpoints = [ep for task, ep in task_endpoint.items() if task in defaults]
        result = asyncio.run(run(server.url, server.pid, endpoints, args, face, photo))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if result["server_errors_5xx"] == 0 and not result["unexpected"] else 1
