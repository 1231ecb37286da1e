"""One training run: `run(Config) -> TrainResult` trains the tower, calibrates its threshold
on held-out identities, writes the checkpoint and exports the model."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from scripts.export.faces import EmbeddingTower, embedder_postprocess, export_embedder
from scripts.train.similarity.data import FaceFolder, PKSampler, scan, split
from scripts.train.similarity.metrics import calibrate, pair_scores, semi_hard_triplet_loss

# --- training ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One training run; `python -m scripts train-faces train` builds it from its arguments."""

    data: Path  # folder of <identity>/<image> face crops
    name: str  # model name (folder under out)
    out: Path = Path("models")
    checkpoint: Path | None = None  # default runs/<name>/tower.pt
    arch: str = "small"  # small | mobilenet_v2
    pretrained: Path | None = None  # torchvision mobilenet_v2 state_dict
    size: int = 112  # input side of the aligned crop
    dim: int = 128
    width: int = 32  # channels of the small tower
    epochs: int = 30
    steps: int = 0  # batches per epoch (0: one pass)
    pk: tuple[int, int] = (8, 4)  # P identities x K images per batch
    margin: float = 0.2
    lr: float = 1e-3
    val_fraction: float = 0.2
    target_far: float = 0.01
    threshold: str = "accuracy"  # accuracy | far
    workers: int = 0
    threads: int = 0  # torch threads (0: torch's default)
    seed: int = 0
    quiet: bool = False  # no progress bars


@dataclass
class TrainResult:
    epoch_losses: list[float]
    calibration: dict[str, Any]
    checkpoint: Path
    model_dir: Path
    seconds: float


def preprocess_for(arch: str, size: int) -> dict[str, Any]:
    imagenet = arch == "mobilenet_v2"
    return {
        "resize": "stretch",  # the service feeds an aligned crop of exactly this size
        "size": [size, size],
        "interpolation": "bilinear",
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406] if imagenet else [0.5, 0.5, 0.5],
        "std": [0.229, 0.224, 0.225] if imagenet else [0.5, 0.5, 0.5],
        "channel_order": "RGB",
        "layout": "NCHW",
    }


@torch.no_grad()
def embed_all(tower: torch.nn.Module, data: FaceFolder, batch: int) -> np.ndarray:
    tower.eval()
    loader = DataLoader(data, batch_size=batch, shuffle=False)
    return torch.cat([tower(x) for x, _ in loader]).numpy()


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run(cfg: Config) -> TrainResult:
    threads = torch.get_num_threads()
    if cfg.threads:  # tiny models train faster on one thread than on contended cores
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Config) -> TrainResult:
    started = time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    people = scan(cfg.data)
    train_ids, val_ids = split(list(people), cfg.val_fraction, cfg.seed)
    pre = preprocess_for(cfg.arch, cfg.size)
    train_items = [(p, i) for i, name in enumerate(train_ids) for p in people[name]]
    val_items = [(p, i) for i, name in enumerate(val_ids) for p in people[name]]
    print(
        f"{len(train_ids)} identities ({len(train_items)} images) to train on, "
        f"{len(val_ids)} held out ({len(val_items)} images) for calibration"
    )
    tower = EmbeddingTower(cfg.arch, cfg.dim, cfg.width)
    if cfg.pretrained:
        state = torch.load(cfg.pretrained, map_location="cpu", weights_only=True)
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        tower.features.load_state_dict(features, strict=True)
    train_set = FaceFolder(train_items, cfg.size, pre, augment=True)
    p, k = cfg.pk
    batches = cfg.steps or max(1, math.ceil(len(train_items) / (p * k)))
    sampler = PKSampler([label for _, label in train_items], p, k, batches, cfg.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers)
    optimizer = torch.optim.AdamW(tower.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * batches)
    epoch_losses: list[float] = []
    for epoch in range(1, cfg.epochs + 1):
        tower.train()
        total, active = 0.0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=cfg.quiet)
        for x, y in bar:
            loss, stats = semi_hard_triplet_loss(tower(x), y, cfg.margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            active += stats["active"]
            bar.set_postfix(loss=f"{loss.item():.4f}", active=f"{stats['active']:.2f}")
        epoch_losses.append(total / batches)
        print(f"epoch {epoch}: triplet loss {epoch_losses[-1]:.4f}, active {active / batches:.2f}")

    val = FaceFolder(val_items, cfg.size, pre, augment=False)
    emb = embed_all(tower, val, cfg.pk[0] * cfg.pk[1])
    scores, same = pair_scores(emb, np.array([label for _, label in val_items]))
    cal = calibrate(scores, same, cfg.target_far)
    print(
        f"held-out pairs: {cal['positive_pairs']} same, {cal['negative_pairs']} different; "
        f"ROC AUC {cal['roc_auc']:.4f}; accuracy {cal['accuracy']:.4f} at cosine "
        f"{cal['threshold_accuracy']:.4f}; TAR {cal['tar_at_far']:.4f} at FAR "
        f"{cfg.target_far:g} (cosine {cal['threshold_at_far']:.4f})"
    )
    chosen = cal["threshold_accuracy" if cfg.threshold == "accuracy" else "threshold_at_far"]
    rule = "accuracy-maximising" if cfg.threshold == "accuracy" else f"FAR {cfg.target_far:g}"
    source = {
        "architecture": f"EmbeddingTower {cfg.arch} (dim {cfg.dim}, width {cfg.width})",
        "weights": "trained by train-faces (triplet loss, semi-hard mining, "
        f"margin {cfg.margin})"
        + (f" from {cfg.pretrained}" if cfg.pretrained else " from scratch"),
        "training_data": f"{cfg.data} ({len(train_ids)} identities, {len(train_items)} images)",
        "epochs": cfg.epochs,
        "final_loss": epoch_losses[-1],
    }
    ckpt = {
        "kind": "face-embedder",
        "arch": cfg.arch,
        "dim": cfg.dim,
        "width": cfg.width,
        "size": [cfg.size, cfg.size],
        "preprocess": pre,
        "state_dict": tower.state_dict(),
        "calibration": cal,
        "threshold": {"cosine": chosen, "rule": rule},
        "source": source,
        "epoch_losses": epoch_losses,
    }
    checkpoint = cfg.checkpoint or Path("runs") / cfg.name / "tower.pt"
    _save_atomic(ckpt, checkpoint)
    model_dir = export_checkpoint(ckpt, name=cfg.name, out_dir=cfg.out)
    seconds = time.perf_counter() - started
    print(f"checkpoint {checkpoint}; model {model_dir}; {seconds:.1f} s")
    return TrainResult(epoch_losses, cal, checkpoint, model_dir, seconds)


def export_checkpoint(ckpt: dict[str, Any], *, name: str, out_dir: Path) -> Path:
    """A checkpoint from `train` -> out_dir/name with the calibrated threshold in its card."""
    from scripts.export.faces import tower_from_checkpoint

    cal, threshold = ckpt["calibration"], ckpt["threshold"]
    cos = float(threshold["cosine"])
    post = embedder_postprocess(
        {"cosine": cos, "euclidean": math.sqrt(max(0.0, 2.0 - 2.0 * cos))},
        f"calibrated by train-faces ({threshold['rule']} threshold) on "
        f"{cal['pairs']} pairs of held-out identities",
        calibration=cal,
    )
    return export_embedder(
        tower_from_checkpoint(ckpt),
        name=name,
        out_dir=out_dir,
        preprocess=ckpt["preprocess"],
        postprocess=post,
        source=ckpt["source"],
    )
