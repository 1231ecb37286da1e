"""Time service.boxes NMS on random candidate boxes and write the figures as JSON.

    python -m scripts bench-nms                       # 10,000 boxes, 80 classes
    python -m scripts bench-nms --n 30000 --classes 1 --baseline --out artifacts/nms.json

Boxes: centres uniform over a 640x640 image, sides uniform in 10..200 px, scores uniform, class
ids uniform (seeded). Reports the median and best of --repeat runs of `batched_nms` (class-wise)
and `nms` (all boxes as one class), and with --baseline the previous implementation (one
vectorised IoU row per kept box over every remaining candidate, classes shifted apart) checked to
keep the same boxes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scripts.constants import ROOT
from service.boxes import area, batched_nms, nms


def candidates(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 640, (n, 2))
    half = rng.uniform(10, 200, (n, 2)) / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32), rng.integers(0, classes, n)


def baseline_batched_nms(
    xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """The implementation this project started with, for comparison only."""
    span = float(xyxy.max()) - float(min(xyxy.min(), 0.0)) + 1.0
    boxes_all = xyxy + (class_ids.astype(np.float32) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    boxes = boxes_all[order].astype(np.float32, copy=False)
    areas = area(boxes)
    keep: list[int] = []
    alive = np.arange(len(order))
    while alive.size:
        best, rest = alive[0], alive[1:]
        keep.append(int(best))
        lt = np.maximum(boxes[best, :2], boxes[rest, :2])
        rb = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[best] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        alive = rest[overlap <= iou_threshold]
    out: np.ndarray = order[np.asarray(keep, dtype=np.int64)]
    return out


def timed(fn: Callable[[], np.ndarray], repeat: int) -> tuple[dict[str, float], np.ndarray]:
    kept = fn()  # warm-up (and the answer)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    stats = {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3)}
    return stats | {"kept": int(kept.size)}, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="candidate boxes")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also time the old version")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_nms.json")
    args = parser.parse_args(argv)

    boxes, scores, class_ids = candidates(args.n, args.classes, args.seed)
    result: dict[str, object] = {
        "candidates": args.n,
        "classes": args.classes,
        "iou_threshold": args.iou,
        "repeat": args.repeat,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    stats, kept = timed(lambda: batched_nms(boxes, scores, class_ids, args.iou), args.repeat)
    result["batched_nms"] = stats
    result["nms_single_class"], _ = timed(lambda: nms(boxes, scores, args.iou), args.repeat)
    if args.baseline:
        base, base_kept = timed(
            lambda: baseline_batched_nms(boxes, scores, class_ids, args.iou), min(args.repeat, 3)
        )
        result["baseline_batched_nms"] = base | {
            "same_boxes": bool(np.array_equal(base_kept, kept))
        }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0
