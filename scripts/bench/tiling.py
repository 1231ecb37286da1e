"""Tiled inference (`tiling` on /detect and /segment): what it finds and what it costs, in one
run, as JSON.

    python -m scripts bench-tiling --out tiling.json

Starts the service on a free loopback port with the default detector and segmenter, then:
  accuracy  recall at IoU 0.5 (score >= 0.25, the default threshold) and false boxes at
            score >= 0.5 for tiling off / auto / on with several tile sizes, on the tuning set
            (scripts/recipes/detect_truth.py TRUTH + SMALL) and on the held-out set (HELD_OUT, never
            tuned on);
  cost      median latency, sequential throughput and throughput with --concurrency clients
            at once, per photo size, off against on/auto;
  segment   the segmenter's held-out shapes images scaled up 3x, tiling off and on: mask IoU,
            per hand-made object, of the masks brought back to the unscaled image, against
            the unscaled image's own answer and its ground truth.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.bench import kit as benchkit
from scripts.constants import ROOT
from scripts.recipes.defaults import fetch_bench_data, testdata_path
from scripts.recipes.detect_truth import HELD_OUT, Truth, false_detections, match, tuning_set

DETECTOR = "yolov3-tiny-coco"
SEGMENTER = "shapes-maskrcnn-mobilenet_v2"
# (label, query) for the accuracy table
SETTINGS = [
    ("off", "tiling=off"),
    ("auto", "tiling=auto"),
    ("on-256", "tiling=on&tile_size=256"),
    ("on-320", "tiling=on&tile_size=320"),
    ("on-416", "tiling=on&tile_size=416"),
]
COST_SIZES = [(640, 427), (1024, 683), (1352, 900), (2048, 1365), (4096, 2731)]
COST_SETTINGS = [("off", "tiling=off"), ("auto", "tiling=auto"), ("on", "tiling=on")]


def _post(client: Any, path: str, data: bytes, name: str = "x.jpg") -> dict[str, Any]:
    r = client.post(path, files={"image": (name, data, "application/octet-stream")})
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


def accuracy(client: Any, truths: dict[str, list[Truth]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for label, query in SETTINGS:
        found = total = false = tiles = 0
        per_photo = {}
        for name, photo_truths in truths.items():
            body = _post(
                client, f"/detect?model={DETECTOR}&{query}", testdata_path(name).read_bytes(), name
            )
            ious = match(photo_truths, body["detections"])
            hits = sum(v >= 0.5 for v in ious)
            wrong = false_detections(name, photo_truths, body["detections"])
            found, total, false = found + hits, total + len(ious), false + len(wrong)
            tiles += (body.get("tiling") or {}).get("tiles", 0)
            per_photo[name] = {
                "found": hits,
                "objects": len(ious),
                "false": len(wrong),
                "false_boxes": [
                    {"label": d["label"], "score": round(d["score"], 3), "box": d["box"]}
                    for d in wrong
                ],
            }
        rows[label] = {
            "recall": round(found / total, 3),
            "found": found,
            "objects": total,
            "false_at_0.5": false,
            "tiles_run": tiles,
            "per_photo": per_photo,
        }
    return rows


def _resized(name: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    with Image.open(testdata_path(name)) as img:
        buffer = io.BytesIO()
        img.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def cost(client: Any, url: str, requests: int, concurrency: int) -> list[dict[str, Any]]:
    rows = []
    for size in COST_SIZES:
        data = _resized("kite.jpg", size)
        row: dict[str, Any] = {"size": f"{size[0]}x{size[1]}"}
        for label, query in COST_SETTINGS:
            path = f"/detect?model={DETECTOR}&{query}"
            _post(client, path, data)  # warm-up
            latencies, steps = [], []
            started = time.perf_counter()
            for _ in range(requests):
                t = time.perf_counter()
                body = _post(client, path, data)
                latencies.append((time.perf_counter() - t) * 1000)
                steps.append(body["timing_ms"])
            elapsed = time.perf_counter() - started
            row[label] = {
                "p50_ms": round(statistics.median(latencies), 1),
                "images_per_s": round(requests / elapsed, 2),
                f"images_per_s_c{concurrency}": round(
                    benchkit.rate_at_once(
                        url + path, data, concurrency=concurrency, requests=concurrency * requests
                    ),
                    2,
                ),
                "tiles": (body.get("tiling") or {}).get("tiles", 0),
                "inference_ms": round(statistics.median(s.get("inference", 0) for s in steps), 1),
                "tile_preprocess_ms": round(
                    statistics.median(s.get("tile_preprocess", 0) for s in steps), 1
                ),
                "merge_ms": round(statistics.median(s.get("merge", 0) for s in steps), 1),
            }
        rows.append(row)
    return rows


def segment(client: Any, folder: Path, scale: int, limit: int) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from scripts.recipes.shapes import make_split, splits
    from scripts.train.segmentation.data import CocoInstances, load_coco
    from scripts.train.segmentation.evaluate import match as match_masks
    from service.masks import BoxMask, decode_rle
    from service.tasks.segment import Instances

    card = json.loads((folder / "model.json").read_text())
    data = card["source"]["training_data"]
    spec = splits(data["train"]["images"], data["val"]["images"], data["seed"])[1]
    with tempfile.TemporaryDirectory() as tmp:
        annotations = make_split(Path(tmp), spec)
        dataset = CocoInstances(load_coco(annotations), annotations.parent / "images")
        per: dict[str, list[float]] = {"1x off": [], f"{scale}x off": [], f"{scale}x on": []}
        tiles: list[int] = []
        for i in range(min(limit, len(dataset))):
            _, objects = dataset.load(i)
            info = dataset.index.images[dataset.ids[i]]
            raw = (annotations.parent / "images" / info["file_name"]).read_bytes()
            with Image.open(io.BytesIO(raw)) as img:
                w, h = img.size
                buffer = io.BytesIO()
                img.resize((w * scale, h * scale), Image.Resampling.BICUBIC).save(buffer, "PNG")
            big = buffer.getvalue()
            for label, upload, query, factor in (
                ("1x off", raw, "tiling=off", 1),
                (f"{scale}x off", big, "tiling=off", scale),
                (f"{scale}x on", big, "tiling=on", scale),
            ):
                body = _post(client, f"/segment?model={SEGMENTER}&{query}", upload)
                found = body["instances"]
                # back to the unscaled image: the centre pixel of each factor x factor block
                masks = [
                    BoxMask.from_full(
                        decode_rle(f["mask"])[factor // 2 :: factor, factor // 2 :: factor]
                    )
                    for f in found
                ]
                pred = Instances(
                    np.array([f["box"] for f in found], np.float32).reshape(-1, 4) / factor,
                    np.array([f["class_id"] for f in found], np.int64),
                    np.array([f["score"] for f in found], np.float32),
                    masks,
                )
                per[label] += match_masks([c for c, _ in objects], [m for _, m in objects], pred)
                if label.endswith("on"):
                    tiles.append((body.get("tiling") or {}).get("tiles", 0))
    return {
        "images": min(limit, len(dataset)),
        "instances": len(per["1x off"]),
        "scale": scale,
        "mask_iou": {k: round(float(np.mean(v)), 4) for k, v in per.items()},
        "tiles_per_image": round(float(np.mean(tiles)), 1),
    }


def main(argv: list[str] | None = None) -> None:
    import httpx2 as httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--requests", type=int, default=5, help="per photo size and setting")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="clients at once for the throughput figure"
    )
    parser.add_argument("--segment-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=benchkit.cores())
    args = parser.parse_args(argv)
    fetch_bench_data()  # the held-out photos no test needs
    port = benchkit.free_port()
    with tempfile.TemporaryDirectory() as models:
        for name in (DETECTOR, SEGMENTER):
            (Path(models) / name).symlink_to((args.models / name).resolve(), True)
        env = benchkit.service_env(Path(models), port, args.threads)
        with (
            benchkit.serve(
                benchkit.service_argv(), port=port, ready_path="/readyz", env=env, timeout=300
            ) as server,
            httpx.Client(base_url=server.url, timeout=300) as client,
        ):
            result = {
                "detector": DETECTOR,
                "threads": args.threads,
                "accuracy": {
                    "tuning": accuracy(client, tuning_set()),
                    "held_out": accuracy(client, HELD_OUT),
                },
                "cost": cost(client, server.url, args.requests, args.concurrency),
                "segment": segment(
                    client, args.models / SEGMENTER, scale=3, limit=args.segment_images
                ),
            }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
