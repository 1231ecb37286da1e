"""The offline proof: scikit-image's `lfw_subset` (100 face and 100 non-face 25x25 grey crops,
shipped inside the scikit-image wheel) as an ImageFolder, fine-tuned with each strategy.

    python -m scripts lfw-data data/lfw_subset            # write the ImageFolder
    python -m scripts lfw-data data/lfw_subset --bench    # + all three strategies
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("face", "not_face")  # skimage docs: the first 100 are faces, the last 100 are not


def write_lfw_subset(out: Path) -> Path:
    """out/face/000.png ... out/not_face/099.png (8-bit greyscale PNG)."""
    from skimage.data import lfw_subset

    images = lfw_subset()  # type: ignore[no-untyped-call]  # (200, 25, 25): float64 in 0..1 (its docstring says uint8)
    if images.dtype.kind == "f":
        images = np.clip(images * 255.0 + 0.5, 0, 255)
    for i, img in enumerate(images.astype(np.uint8)):
        folder = out / CLASSES[i // 100]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = img
        Image.fromarray(pixels, mode="L").save(folder / f"{i % 100:03d}.png")
    return out


def bench(
    data: Path, size: int, epochs: int, val_fraction: float, models_dir: Path, runs: Path
) -> list[dict[str, object]]:
    from scripts.train.classification.loop import LoopConfig
    from scripts.train.classification.train import Config, run

    rows = []
    for strategy in ("feature-extraction", "partial", "full"):
        name = f"lfw-{strategy}"
        started = time.perf_counter()
        summary = run(
            Config(
                data=data,
                name=name,
                strategy=strategy,
                size=size,
                val_fraction=val_fraction,
                models_dir=models_dir,
                run_dir=runs / name,
                loop=LoopConfig(epochs=epochs, seed=0, quiet=True),
            )
        )
        rows.append(
            {
                "strategy": strategy,
                "val_accuracy": summary["val"]["accuracy"],
                "val_accuracy_onnx": summary.get("val_accuracy_onnx"),
                "trainable_parameters": summary["trainable_parameters"],
                "epochs_run": summary["epochs_run"],
                "best_epoch": summary["best_epoch"],
                "cache_s": summary["seconds"]["cache"],
                "train_s": summary["seconds"]["train"],
                "total_s": time.perf_counter() - started,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--bench", action="store_true", help="fine-tune with each strategy")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--val-split", type=float, default=0.5, help="0.5: 100 validation images")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/train/classification/cli.py
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    write_lfw_subset(args.out)
    print(f"wrote {args.out}/{{{','.join(CLASSES)}}}/ (100 PNGs each)")
    if args.bench:
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        rows = bench(args.out, args.size, args.epochs, args.val_split, args.models_dir, args.runs)
        print(
            "| strategy | val accuracy | ONNX val accuracy | trainable params | epochs (best) "
            "| cache s | train s | total s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['strategy']} | {r['val_accuracy']:.1%} | {r['val_accuracy_onnx']:.1%} "
                f"| {r['trainable_parameters']:,} | {r['epochs_run']} ({r['best_epoch']}) "
                f"| {r['cache_s']:.1f} | {r['train_s']:.1f} | {r['total_s']:.1f} |"
            )
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        (args.runs / "lfw-bench.json").write_text(json.dumps(rows, indent=2) + "\n")
