"""The Mask R-CNN training loop: SGD with warm-up and cosine decay, a progress bar, a
checkpoint per epoch (`last.pt`) and the best one by validation mask IoU (`best.pt`).

Ctrl-C stops at the current step, writes `last.pt` and returns; `resume` continues from it.
Checkpoints are written to a temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from scripts.export.maskrcnn import CHECKPOINT_FORMAT
from scripts.train.segmentation.data import CocoInstances, collate
from scripts.train.segmentation.evaluate import MaskScores, evaluate
from scripts.train.segmentation.models import ModelConfig


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 12
    batch_size: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    clip_grad: float = 10.0
    eval_every: int = 1  # epochs
    seed: int = 0
    workers: int = 0


@dataclass
class TrainResult:
    best: MaskScores | None
    last: MaskScores | None
    epochs_done: int
    steps: int
    seconds: float
    interrupted: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.part")
    torch.save(dict(payload), tmp)
    os.replace(tmp, path)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(
    model: MaskRCNN,
    model_cfg: ModelConfig,
    labels: list[str],
    train_set: CocoInstances,
    val_set: CocoInstances | None,
    out_dir: Path,
    settings: TrainSettings,
    *,
    source: Mapping[str, Any],
    resume: Path | None = None,
    val_limit: int | None = None,
) -> TrainResult:
    """Train in place; returns the scores. out_dir receives last.pt and best.pt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    loader = DataLoader(
        train_set,
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=settings.workers,
        generator=torch.Generator().manual_seed(settings.seed),
        drop_last=len(train_set) >= settings.batch_size,
    )
    total = settings.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total, settings.warmup_steps)
    )
    start_epoch, step, elapsed = 0, 0, 0.0
    best: MaskScores | None = None
    history: list[dict[str, Any]] = []
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        elapsed = float(state.get("seconds", 0.0))
        history = list(state.get("history", []))
        if state.get("best"):
            best = MaskScores(**state["best"])
        print(f"resumed from {resume}: epoch {start_epoch}, step {step}")

    def payload(epoch: int, scores: MaskScores | None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": model_cfg.to_dict(),
            "labels": labels,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "seconds": elapsed,
            "train": asdict(settings),
            "metrics": scores.as_dict() if scores else {},
            "best": asdict(best) if best else None,
            "history": history,
            "source": dict(source),
        }

    started = time.perf_counter() - elapsed
    last: MaskScores | None = None
    epoch = start_epoch
    interrupted = False
    try:
        for epoch in range(start_epoch, settings.epochs):
            model.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch")
            for images, targets in bar:
                losses = model(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.clip_grad)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.set_postfix(
                    loss=f"{loss.item():.3f}",
                    mask=f"{losses['loss_mask'].item():.3f}",
                    lr=f"{scheduler.get_last_lr()[0]:.4f}",
                )
            elapsed = time.perf_counter() - started
            last = None
            done = epoch + 1
            if val_set is not None and (done % settings.eval_every == 0 or done == settings.epochs):
                model.eval()
                last = evaluate(model, val_set, limit=val_limit)
                history.append({"epoch": done, "step": step, **last.as_dict()})
                print(f"epoch {done}: val {last.as_dict()}")
                if best is None or last.mask_iou >= best.mask_iou:
                    best = last
                    save_checkpoint(out_dir / "best.pt", payload(done, last))
            elapsed = time.perf_counter() - started
            save_checkpoint(out_dir / "last.pt", payload(done, last))
        epoch = settings.epochs
    except KeyboardInterrupt:
        interrupted = True
        elapsed = time.perf_counter() - started
        save_checkpoint(out_dir / "last.pt", payload(epoch, None))
        print(
            f"\ninterrupted at epoch {epoch + 1}, step {step}: saved {out_dir / 'last.pt'}; "
            f"continue with --resume {out_dir / 'last.pt'}"
        )
    if val_set is None and not interrupted:
        save_checkpoint(out_dir / "best.pt", payload(epoch, None))
    return TrainResult(best, last, epoch, step, elapsed, interrupted, history)
