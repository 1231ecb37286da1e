"""The training loop: epochs over a batch source, cosine or step schedule, early stopping,
the best checkpoint kept, and a resumable `last.pt` written after every epoch.

Determinism: every epoch seeds torch's global RNG (augmentation, dropout) and its own sampling
generator from (seed, epoch), and data loads in order, so a run resumed after epoch e
continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scripts.export.classifier import GapClassifier
from scripts.train.classification import FinetuneError
from scripts.train.classification.data import epoch_order
from scripts.train.classification.precision import autocast
from scripts.train.classification.strategies import Split, param_groups, set_train_mode

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    """Inputs of the trainable part (images, or cached frozen activations) and labels."""

    train_labels: torch.Tensor

    def train_batches(self, order: torch.Tensor, generator: torch.Generator) -> Iterator[Batch]: ...

    def val_batches(self) -> Iterator[Batch]: ...


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 15
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    batch_size: int = 32
    schedule: str = "cosine"  # cosine | step
    patience: int = 5
    seed: int = 0
    balanced: bool = False
    precision: str = "fp32"  # fp32 | bf16 (resolved: see scripts/train/classification/precision.py)
    quiet: bool = False


@dataclass
class LoopState:
    """Everything after `epoch` completed epochs that resuming needs besides the weights."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0


def _scheduler(
    opt: torch.optim.Optimizer, cfg: LoopConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "step":  # x0.1 at 1/3 and 2/3 of the run
        step = max(1, cfg.epochs // 3) * steps_per_epoch
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=0.1)
    raise FinetuneError(f"unknown schedule {cfg.schedule!r}: cosine | step")


def evaluate(
    trainable: nn.Module, source: BatchSource, precision: str = "fp32"
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """-> (mean loss, accuracy, predicted labels (N,), true labels (N,)) on the val set."""
    was_training = trainable.training
    trainable.eval()
    losses, preds, trues = [], [], []
    with torch.no_grad():
        for x, y in source.val_batches():
            with autocast(precision):
                logits = trainable(x).float()
            losses.append(F.cross_entropy(logits, y, reduction="sum"))
            preds.append(logits.argmax(1))
            trues.append(y)
    trainable.train(was_training)
    pred, true = torch.cat(preds), torch.cat(trues)
    return (
        float(torch.stack(losses).sum()) / len(true),
        float((pred == true).float().mean()),
        pred,
        true,
    )


def _save(obj: dict[str, Any], path: Path) -> None:
    """Atomic: a Ctrl-C mid-write leaves the previous file intact."""
    tmp = path.with_suffix(".part")
    torch.save(obj, tmp)
    tmp.replace(path)


def fit(
    model: GapClassifier,
    split: Split,
    source: BatchSource,
    cfg: LoopConfig,
    *,
    run_dir: Path,
    fingerprint: dict[str, Any],
    save_best: Callable[[LoopState], None],
    resume: bool = False,
) -> LoopState:
    """Train `split.trainable` on `source`; returns the final state. last.pt is written after
    every epoch; `save_best` is called whenever validation improves (accuracy, then loss)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n = len(source.train_labels)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(
        param_groups(model, cfg.lr, cfg.backbone_lr_mult),
        weight_decay=cfg.weight_decay,
    )
    sched = _scheduler(opt, cfg, steps_per_epoch)
    state = LoopState()
    last = run_dir / "last.pt"
    if resume:
        saved = torch.load(last, map_location="cpu", weights_only=True)
        if saved["fingerprint"] != fingerprint:
            changed = sorted(
                k
                for k in fingerprint | saved["fingerprint"]
                if fingerprint.get(k) != saved["fingerprint"].get(k)
            )
            raise FinetuneError(f"{last} was trained with different settings: {changed}")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = LoopState(**saved["state"])
        print(f"resumed from {last} after epoch {state.epoch}")

    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        started = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 100_019 + epoch)
        order = epoch_order(source.train_labels, balanced=cfg.balanced, generator=generator)
        set_train_mode(split, True)
        seen, loss_sum, correct = 0, 0.0, 0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=cfg.quiet,
        )
        for x, y in source.train_batches(order, generator):
            with autocast(cfg.precision):
                logits = split.trainable(x).float()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}")
        bar.close()
        set_train_mode(split, False)
        val_loss, val_acc, _, _ = evaluate(split.trainable, source, cfg.precision)
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        state.history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": opt.param_groups[0]["lr"],
                "seconds": seconds,
            }
        )
        state.epoch = epoch
        improved = val_acc > state.best_acc or (
            val_acc == state.best_acc and val_loss < state.best_loss
        )
        if improved:
            state.best_epoch, state.best_acc, state.best_loss = epoch, val_acc, val_loss
            state.bad_epochs = 0
            save_best(state)
        else:
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= cfg.patience
        if not cfg.quiet:
            tqdm.write(
                f"epoch {epoch}/{cfg.epochs}  train loss {loss_sum / seen:.4f} acc "
                f"{correct / seen:.1%}  val loss {val_loss:.4f} acc {val_acc:.1%}  "
                f"({seconds:.1f} s){'  * best' if improved else ''}"
            )
        _save(
            {
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "state": asdict(state),
            },
            last,
        )
        if state.stopped_early and not cfg.quiet:
            print(f"early stop: no improvement for {cfg.patience} epochs")
    return state
