"""One fine-tuning run, start to finish:

scan the ImageFolder -> pretrained backbone + GAP head -> strategy (auto: linear probe)
  -> cache frozen activations -> train (best.pt, last.pt) -> report (PNGs, summary.json)
  -> export ONNX + card into models/<name>/ -> check the ONNX on the validation set
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scripts.export.classifier import GapClassifier, build_classifier, export_classifier
from scripts.train.classification import FinetuneError, precision, report, strategies
from scripts.train.classification.data import Dataset, ImageSet, Transforms, is_skewed, scan
from scripts.train.classification.features import ActivationCache, linear_probe
from scripts.train.classification.loop import LoopConfig, LoopState, evaluate, fit
from scripts.train.classification.pretrained import Pretrained
from scripts.train.classification.sources import CachedSource, ImageSource
from scripts.train.classification.weights import resolve


@dataclass(frozen=True)
class Config:
    data: Path
    name: str
    arch: str = "mobilenet_v2"
    weights: str = "auto"
    strategy: str = "auto"
    unfreeze: int | None = None
    hidden: int = 256
    dropout: float = 0.2
    size: int = 224
    val_fraction: float = 0.2
    augment: bool = True
    flip: bool = True
    cache_views: int = 4
    cache_mb: int = 2048
    precision: str = "fp32"  # fp32 | bf16 | auto (scripts/train/classification/precision.py)
    balance: str = "auto"  # auto | on | off
    loop: LoopConfig = field(default_factory=LoopConfig)
    run_dir: Path | None = None  # default runs/<name>
    models_dir: Path = Path("models")
    export: bool = True
    resume: bool = False
    workers: int = 0


def preprocess_for(pretrained: Pretrained, size: int) -> dict[str, Any]:
    pre = dict(pretrained.preprocess)
    pre["size"] = [size, size]
    if pre.get("resize") == "crop":
        pre["resize_short"] = round(size * 256 / 224)
    return pre


def _digest(state_dict: dict[str, torch.Tensor] | None) -> str:
    if state_dict is None:
        return "random"
    h = hashlib.sha256()
    for key, value in state_dict.items():
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _trainable_blocks(split: strategies.Split) -> str:
    if not split.backbone_trains:
        return f"the head only (all {split.num_blocks} backbone blocks frozen)"
    return (
        f"backbone blocks {split.first}-{split.num_blocks - 1} of 0-{split.num_blocks - 1}"
        " + the head"
    )


@dataclass
class Prepared:
    """The data, the pretrained model with its new head, and how images become tensors."""

    ds: Dataset
    pretrained: Pretrained
    preprocess: dict[str, Any]
    model: GapClassifier
    transforms: Transforms
    identity: dict[str, Any]  # what the frozen activations depend on (cache key)
    head: dict[str, Any]  # the checkpoint's "head" entry, as scripts/export/cli.py reads it
    precision: str  # cfg.precision resolved: fp32 | bf16 (autocast for caching and training)


def prepare(cfg: Config) -> Prepared:
    ds = scan(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.loop.seed)
    print(
        f"{cfg.data}: {len(ds.classes)} classes, {len(ds.train)} train / {len(ds.val)} val "
        f"images ({ds.layout})"
    )
    for c, n_tr, n_va in zip(ds.classes, ds.counts("train"), ds.counts("val"), strict=True):
        print(f"  {c}: {n_tr} train, {n_va} val")
    for line in ds.skipped[:10]:
        print(f"  skipped {line}")
    pretrained = resolve(cfg.arch, cfg.weights)
    print(f"backbone {cfg.arch}: {pretrained.description}")
    preprocess = preprocess_for(pretrained, cfg.size)
    torch.manual_seed(cfg.loop.seed)  # the new head's initial weights
    model = build_classifier(
        cfg.arch, len(ds.classes), head="gap", hidden=cfg.hidden, dropout=cfg.dropout
    )
    assert isinstance(model, GapClassifier)
    if pretrained.state_dict is not None:
        try:
            model.features.load_state_dict(pretrained.state_dict, strict=True)
        except RuntimeError as exc:  # e.g. resnet18 weights given for --arch resnet50
            msg = f"{pretrained.description} does not fit {cfg.arch}: {exc}"
            raise FinetuneError(msg) from None
    identity = {
        "arch": cfg.arch,
        "weights": _digest(pretrained.state_dict),
        "preprocess": preprocess,
        "augment": cfg.augment,
        "flip": cfg.flip,
    }
    transforms = Transforms(preprocess, augment=cfg.augment, flip=cfg.flip)
    head = {"type": "gap", "hidden": cfg.hidden, "dropout": cfg.dropout}
    mode = precision.resolve(cfg.precision)
    return Prepared(ds, pretrained, preprocess, model, transforms, identity, head, mode)


def decide(
    cfg: Config, p: Prepared, run_dir: Path
) -> tuple[strategies.Decision, float | None, ActivationCache | None]:
    """cfg.strategy; for `auto` the rule in strategies.choose on a linear probe of the frozen
    backbone's pooled features (those features are kept for feature extraction). A resumed
    run keeps the decision it made the first time (run.json)."""
    if cfg.resume:
        if not (run_dir / "last.pt").is_file():
            raise FinetuneError(f"--resume: no {run_dir / 'last.pt'} to resume from")
        saved = json.loads((run_dir / "run.json").read_text())
        return strategies.Decision(saved["strategy"], saved["reason"]), saved["probe"], None
    if cfg.strategy != "auto":
        return strategies.Decision(cfg.strategy, "chosen with --strategy"), None, None
    all_blocks = torch.nn.Sequential(*strategies.blocks(cfg.arch, p.model.features))
    cache = ActivationCache(
        all_blocks,
        p.transforms,
        identity={**p.identity, "first": len(all_blocks)},
        folder=run_dir / "cache",
        pool=True,
        batch_size=cfg.loop.batch_size,
        seed=cfg.loop.seed,
        quiet=cfg.loop.quiet,
        precision=p.precision,
    )
    ds = p.ds
    acc = linear_probe(
        cache.get("train", ds.train, 0),
        torch.tensor([s.label for s in ds.train]),
        cache.get("val", ds.val, 0),
        torch.tensor([s.label for s in ds.val]),
        len(ds.classes),
        seed=cfg.loop.seed,
    )
    return strategies.choose(min(ds.counts("train")), acc, len(ds.classes)), acc, cache


def _fingerprint(
    cfg: Config, p: Prepared, split: strategies.Split, loop_cfg: LoopConfig, cached: bool
) -> dict[str, Any]:
    """Settings a resumed run must share with the interrupted one."""
    train = "\n".join(f"{s.path}:{s.label}" for s in p.ds.train)
    return {
        "arch": cfg.arch,
        "weights": p.identity["weights"],
        "classes": p.ds.classes,
        "train": hashlib.sha256(train.encode()).hexdigest(),
        "requested_strategy": cfg.strategy,
        "first": split.first,
        "hidden": cfg.hidden,
        "dropout": cfg.dropout,
        "preprocess": p.preprocess,
        "augment": cfg.augment,
        "cached": cached,
        "views": cfg.cache_views if cached else 0,
        **{k: v for k, v in asdict(loop_cfg).items() if k != "quiet"},
    }


def _card_source(
    cfg: Config,
    p: Prepared,
    decision: strategies.Decision,
    split: strategies.Split,
    probe: float | None,
    state: LoopState,
) -> dict[str, Any]:
    """`source` of best.pt and of the model card: base weights, training data, how trained."""
    return {
        "architecture": f"torchvision {cfg.arch}",
        "head": p.head,
        "weights": f"fine-tuned with `python -m scripts train-classifier` from "
        f"{p.pretrained.description}",
        "licence": f"base weights: {p.pretrained.licence}",
        "training_data": p.ds.summary(),
        "fine_tuning": {
            "strategy": decision.strategy,
            "reason": decision.reason,
            "trainable": _trainable_blocks(split),
            "probe_accuracy": probe,
            "best_epoch": state.best_epoch,
            "val_accuracy": state.best_acc,
            "epochs_run": state.epoch,
            "seed": cfg.loop.seed,
            "precision": p.precision,
        },
    }


def _write_split(run_dir: Path, ds: Dataset) -> None:
    """run_dir/split.json: which photo went where; the val list is what the report measures."""
    files = {
        name: {c: [str(s.path) for s in samples if s.label == i] for i, c in enumerate(ds.classes)}
        for name, samples in (("train", ds.train), ("val", ds.val))
    }
    (run_dir / "split.json").write_text(json.dumps(files, indent=1) + "\n")


def _best_saver(
    cfg: Config,
    p: Prepared,
    decision: strategies.Decision,
    split: strategies.Split,
    probe: float | None,
    run_dir: Path,
) -> Callable[[LoopState], None]:
    """best.pt in the checkpoint format scripts/export/cli.py reads (arch, labels, head,
    preprocess, state_dict, source)."""

    def save(state: LoopState) -> None:
        ckpt = {
            "arch": cfg.arch,
            "labels": p.ds.classes,
            "head": p.head,
            "preprocess": p.preprocess,
            "state_dict": p.model.state_dict(),
            "source": _card_source(cfg, p, decision, split, probe, state),
        }
        tmp = run_dir / "best.pt.part"
        torch.save(ckpt, tmp)
        tmp.replace(run_dir / "best.pt")

    return save


def _evaluate_best(
    p: Prepared,
    split: strategies.Split,
    source: CachedSource | ImageSource,
    run_dir: Path,
) -> dict[str, Any]:
    """Load best.pt into the model and measure it on the validation set."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    p.model.load_state_dict(best["state_dict"])
    p.model.eval()
    _, _, pred, true = evaluate(split.trainable, source, p.precision)
    val = report.metrics(true.numpy(), pred.numpy(), p.ds.classes)
    val["misclassified"] = [
        {"path": str(s.path), "true": p.ds.classes[s.label], "predicted": p.ds.classes[int(k)]}
        for s, k in zip(p.ds.val, pred.tolist(), strict=True)
        if k != s.label
    ]
    report.print_metrics(val)
    return val


def run(cfg: Config) -> dict[str, Any]:
    """Run everything; returns the summary also written to run_dir/summary.json."""
    t0 = time.perf_counter()
    run_dir = cfg.run_dir or Path("runs") / cfg.name
    p = prepare(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)  # after scan: never inside a bad data folder
    _write_split(run_dir, p.ds)
    decision, probe, probe_cache = decide(cfg, p, run_dir)
    probe_seconds = time.perf_counter() - t0
    print(f"strategy: {decision.strategy} ({decision.reason})")
    split = strategies.apply(p.model, cfg.arch, decision.strategy, cfg.unfreeze)
    n_trainable = sum(x.numel() for x in p.model.parameters() if x.requires_grad)
    print(f"trainable: {n_trainable:,} parameters: {_trainable_blocks(split)}")
    counts = p.ds.counts("train")
    balanced = cfg.balance == "on" or (cfg.balance == "auto" and is_skewed(counts))
    if balanced:
        print(f"class-balanced sampling on (train counts {counts})")
    if p.precision != "fp32":
        print(
            f"precision: {p.precision} autocast for training and cached activations (export: fp32)"
        )
    loop_cfg = LoopConfig(**{**asdict(cfg.loop), "balanced": balanced, "precision": p.precision})

    t_cache = time.perf_counter()
    source, cached = _source(cfg, p, split, run_dir, probe_cache)
    cache_seconds = time.perf_counter() - t_cache
    plan = {"strategy": decision.strategy, "reason": decision.reason, "probe": probe}
    plan["config"] = json.loads(json.dumps(asdict(cfg), default=str))
    (run_dir / "run.json").write_text(json.dumps(plan, indent=2) + "\n")
    state = fit(
        p.model,
        split,
        source,
        loop_cfg,
        run_dir=run_dir,
        fingerprint=_fingerprint(cfg, p, split, loop_cfg, cached),
        save_best=_best_saver(cfg, p, decision, split, probe, run_dir),
        resume=cfg.resume,
    )
    summary: dict[str, Any] = {
        "name": cfg.name,
        "arch": cfg.arch,
        "weights": p.pretrained.description,
        "strategy": decision.strategy,
        "reason": decision.reason,
        "probe_accuracy": probe,
        "trainable_parameters": n_trainable,
        "cached_activations": cached,
        "class_balanced": balanced,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "dataset": p.ds.summary(),
        "val": _evaluate_best(p, split, source, run_dir),
        "history": state.history,
        "preprocess": p.preprocess,
        "seconds": {
            "scan_weights_probe": probe_seconds,
            "cache": cache_seconds,
            "train": state.train_seconds,
        },
        "checkpoint": str(run_dir / "best.pt"),
    }
    if cfg.export:
        summary |= _export(cfg, p, _card_source(cfg, p, decision, split, probe, state))
    summary["seconds"]["total"] = time.perf_counter() - t0
    report.write(run_dir, summary, state.history)
    print(
        f"report: {run_dir}/summary.json, confusion.png, curves.png "
        f"({summary['seconds']['total']:.1f} s in all)"
    )
    return summary


def _export(cfg: Config, p: Prepared, source: dict[str, Any]) -> dict[str, Any]:
    """models/<name>/ (ONNX + card), then the exported graph's accuracy on the val set."""
    folder = export_classifier(
        p.model,
        name=cfg.name,
        labels=p.ds.classes,
        out_dir=cfg.models_dir,
        preprocess=p.preprocess,
        source=source,
    )
    acc = report.onnx_accuracy(folder / "model.onnx", p.ds, p.transforms)
    print(f"ONNX on the validation set (service preprocessing): {acc:.1%}")
    return {"exported": str(folder), "val_accuracy_onnx": acc}


def _source(
    cfg: Config,
    p: Prepared,
    split: strategies.Split,
    run_dir: Path,
    probe_cache: ActivationCache | None,
) -> tuple[CachedSource | ImageSource, bool]:
    """Cached activations below the first trainable block when there is a frozen part and
    they fit in cfg.cache_mb; else images through the frozen blocks every epoch."""
    bs, ds, transforms = cfg.loop.batch_size, p.ds, p.transforms
    images = ImageSource(
        ImageSet(ds.train, transforms, train=True),
        ImageSet(ds.val, transforms, train=False),
        split.frozen,
        bs,
        cfg.workers,
        p.precision,
    )
    if split.first == 0 or cfg.cache_mb <= 0:
        return images, False
    pool = split.first == split.num_blocks
    if probe_cache is not None and pool:
        cache = probe_cache
    else:
        cache = ActivationCache(
            split.frozen,
            transforms,
            identity={**p.identity, "first": split.first},
            folder=run_dir / "cache",
            pool=pool,
            batch_size=bs,
            seed=cfg.loop.seed,
            quiet=cfg.loop.quiet,
            precision=p.precision,
        )
    views = cfg.cache_views if cfg.augment else 1
    need = cache.bytes_per_image(ds.train[0]) * (views * len(ds.train) + len(ds.val))
    if need > cfg.cache_mb * 2**20:
        print(
            f"activations would take {need / 2**20:.0f} MB > --cache-mb {cfg.cache_mb}: "
            "running the frozen blocks every epoch instead"
        )
        return images, False
    print(
        f"caching frozen activations: {views} view(s) x {len(ds.train)} train + "
        f"{len(ds.val)} val images ({need / 2**20:.1f} MB)"
    )
    labels = torch.tensor([s.label for s in ds.train])
    val_labels = torch.tensor([s.label for s in ds.val])
    return CachedSource(
        cache.views("train", ds.train, views), labels, cache.get("val", ds.val, 0), val_labels, bs
    ), True
