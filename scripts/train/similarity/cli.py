"""Train a Siamese face-embedding tower with triplet loss, calibrate its threshold, export it.

    # folder-per-identity face crops (DATA/<person>/<photo>.jpg), aligned like the service does:
    python -m scripts train-faces align RAW_PHOTOS DATA --detector models/yunet-2023mar
    python -m scripts train-faces train DATA --name my-faces --epochs 30
    python -m scripts train-faces toy /tmp/toy-faces      # a tiny generated dataset

One shared CNN tower embeds anchor, positive and negative; batches hold P identities x K images
and each anchor-positive pair is matched with a semi-hard negative (FaceNet): the closest
negative that is still farther than the positive, else the farthest negative. Identities held
out of training give the pairs the cosine threshold is calibrated on (the accuracy-maximising
one, and the one at a target false-accept rate); ROC AUC is reported and written to the card.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from scripts import hotload
from scripts.export.faces import EmbeddingTower, embedder_postprocess, export_embedder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# --- loss and mining --------------------------------------------------------------------


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) euclidean distances; the sqrt is kept differentiable at 0."""
    sq = (emb * emb).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T).clamp_min(0.0)
    return torch.sqrt(d2 + 1e-12)


def semi_hard_triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over anchor-positive pairs of max(0, d(a,p) - d(a,n) + margin), the negative n
    mined per pair: the closest one with d(a,n) > d(a,p) (semi-hard), or if none is, the
    farthest. Pairs whose anchor has no negative in the batch are skipped.
    -> (loss, {"active": fraction of pairs with loss > 0, "pairs": count})."""
    d = pairwise_distances(emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos = same & ~eye
    neg = ~same
    d_ap = d[:, :, None]  # (a, p, 1)
    d_an = d[:, None, :]  # (a, 1, n)
    inf = torch.tensor(float("inf"), device=emb.device)
    farther = neg[:, None, :] & (d_an > d_ap)
    semi_hard = torch.where(farther, d_an, inf).amin(dim=2)
    hardest_fallback = torch.where(neg[:, None, :], d_an, -inf).amax(dim=2)
    chosen = torch.where(torch.isfinite(semi_hard), semi_hard, hardest_fallback)
    valid = pos & neg.any(dim=1)[:, None]
    if not bool(valid.any()):
        return emb.sum() * 0.0, {"active": 0.0, "pairs": 0.0}
    losses = torch.relu(d[valid] - chosen[valid] + margin)
    stats = {"active": float((losses > 0).float().mean()), "pairs": float(valid.sum())}
    return losses.mean(), stats


# --- calibration ------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive pair scores above a random negative one (ties
    count half): the area under the ROC curve, by ranks (Mann-Whitney U)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise ValueError("ROC AUC needs both positive and negative pairs")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average rank within runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising accuracy of `score >= t` -> (t, accuracy); t lies halfway
    between the two scores it separates."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    n = len(s)
    tp = np.r_[0, np.cumsum(p)]  # accepting the top k pairs, k = 0..n
    fp = np.r_[0, np.cumsum(~p)]
    accuracy = (tp + (fp[-1] - fp)) / n
    # only cut where the score changes, so equal scores fall on one side
    cuttable = np.r_[True, s[1:] < s[:-1], True]
    k = int(np.argmax(np.where(cuttable, accuracy, -1.0)))
    if k == 0:
        t = s[0] + 1e-6
    elif k == n:
        t = s[-1] - 1e-6
    else:
        t = (s[k - 1] + s[k]) / 2.0
    return float(t), float(accuracy[k])


def far_threshold(scores: np.ndarray, positive: np.ndarray, far: float) -> tuple[float, float]:
    """The lowest threshold whose false-accept rate on these pairs is <= far -> (t, TAR)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    negatives = np.sort(scores[~positive])[::-1]
    allowed = int(math.floor(far * len(negatives)))
    t = float(np.nextafter(negatives[allowed], np.inf)) if allowed < len(negatives) else -1.0
    return t, float((scores[positive] >= t).mean())


def pair_scores(
    emb: np.ndarray, labels: np.ndarray, max_negatives: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of every same-identity pair and of (up to max_negatives sampled)
    different-identity pairs of unit embeddings. -> (scores, is_same)."""
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    keep = np.flatnonzero(same)
    negatives = np.flatnonzero(~same)
    if len(negatives) > max_negatives:
        negatives = np.random.default_rng(seed).choice(negatives, max_negatives, replace=False)
    idx = np.r_[keep, negatives]
    return np.einsum("nd,nd->n", emb[i[idx]], emb[j[idx]]), same[idx]


def calibrate(scores: np.ndarray, positive: np.ndarray, target_far: float) -> dict[str, Any]:
    t_acc, acc = accuracy_threshold(scores, positive)
    t_far, tar = far_threshold(scores, positive, target_far)
    return {
        "pairs": int(len(scores)),
        "positive_pairs": int(positive.sum()),
        "negative_pairs": int((~positive).sum()),
        "roc_auc": roc_auc(scores, positive),
        "threshold_accuracy": t_acc,
        "accuracy": acc,
        "target_far": target_far,
        "threshold_at_far": t_far,
        "tar_at_far": tar,
    }


# --- data -------------------------------------------------------------------------------


def scan(root: Path) -> dict[str, list[Path]]:
    """identity -> its images, for every sub-folder of root holding at least 2 images."""
    found = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir()
    }
    return {k: v for k, v in found.items() if len(v) >= 2}


class FaceFolder(Dataset[tuple[torch.Tensor, int]]):
    """(path, label) items -> normalised (3, H, W) tensors; flips and brightness if augment."""

    def __init__(
        self, items: list[tuple[Path, int]], size: int, pre: dict[str, Any], augment: bool
    ) -> None:
        self.items, self.size, self.augment = items, size, augment
        self.scale = float(pre["scale"])
        self.mean = torch.tensor(pre["mean"]).view(3, 1, 1)
        self.std = torch.tensor(pre["std"]).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)
        if self.augment:
            if random.random() < 0.5:
                x = x.flip(2)
            x = (x * random.uniform(0.8, 1.2)).clamp(0, 255)
        return (x * self.scale - self.mean) / self.std, label


class PKSampler(Sampler[list[int]]):
    """Batches of P identities x K images each (drawn with replacement when an identity has
    fewer than K), so every anchor has positives and negatives in its batch."""

    def __init__(self, labels: list[int], p: int, k: int, batches: int, seed: int) -> None:
        self.by_label: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            self.by_label[label].append(i)
        self.p, self.k, self.batches = min(p, len(self.by_label)), k, batches
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):  # type: ignore[no-untyped-def]
        labels = list(self.by_label)
        for _ in range(self.batches):
            batch: list[int] = []
            for label in self.rng.sample(labels, self.p):
                pool = self.by_label[label]
                if len(pool) >= self.k:
                    batch += self.rng.sample(pool, self.k)
                else:
                    batch += [self.rng.choice(pool) for _ in range(self.k)]
            yield batch


def make_toy_dataset(
    root: Path, identities: int = 10, per_identity: int = 6, size: int = 32, seed: int = 0
) -> Path:
    """A tiny generated folder-per-identity set: each identity is a fixed arrangement of
    coloured blobs on its own background; its images vary position, brightness and noise."""
    rng = np.random.default_rng(seed)
    for ident in range(identities):
        background = tuple(int(v) for v in rng.integers(0, 256, 3))
        blobs = [
            (
                rng.uniform(0.15, 0.85, 2) * size,
                rng.uniform(0.08, 0.2) * size,
                rng.integers(0, 256, 3),
            )
            for _ in range(4)
        ]
        folder = root / f"person_{ident:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            img = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(img)
            shift = rng.normal(0, size * 0.03, 2)
            for (cx, cy), r, colour in blobs:
                x, y = cx + shift[0], cy + shift[1]
                draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in colour))
            arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15)
            arr += rng.normal(0, 8, arr.shape)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{n:03d}.png")
    return root


def align_dataset(raw: Path, out: Path, detector: Path, size: int = 112) -> int:
    """Raw photos (folder per identity) -> aligned face crops as the service makes them:
    the detector's largest face, 5-point similarity onto the ArcFace template."""
    import onnxruntime as ort

    from service.cards import read_card
    from service.images import decode
    from service.tasks.faces import (
        ARCFACE_TEMPLATE,
        DetectorSettings,
        align,
        detect_postprocess,
        detect_preprocess,
        largest,
    )

    loaded = read_card(detector)
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    settings = DetectorSettings.from_card(loaded.card)
    written = 0
    for identity, paths in tqdm(scan(raw).items(), desc="aligning", unit="identity"):
        for path in paths:
            image = decode(path.read_bytes(), max_pixels=100_000_000)
            tensor, geometry = detect_preprocess(image, loaded.card.preprocess)
            rows = session.run(None, {input_name: tensor})
            outputs = {n: o[0] for n, o in zip(names, rows, strict=True)}
            faces = detect_postprocess(outputs, tensor.shape[2:4], geometry, settings)
            if not len(faces):
                print(f"no face in {path}; skipped")
                continue
            marks = faces.landmarks[largest(faces)]
            crop = align(image.pixels, marks, ARCFACE_TEMPLATE * size / 112, (size, size))
            (out / identity).mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(out / identity / f"{path.stem}.png")
            written += 1
    return written


# --- training ---------------------------------------------------------------------------


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


def split(identities: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    shuffled = identities[:]
    random.Random(seed).shuffle(shuffled)
    n_val = max(2, round(len(shuffled) * val_fraction))
    if len(shuffled) - n_val < 2:
        raise SystemExit(
            f"{len(shuffled)} identities with >= 2 images: need at least 4 (2 to train on, "
            "2 held out for calibration)"
        )
    return sorted(shuffled[n_val:]), sorted(shuffled[:n_val])


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


def train(args: argparse.Namespace) -> TrainResult:
    threads = torch.get_num_threads()
    if args.threads:  # tiny models train faster on one thread than on contended cores
        torch.set_num_threads(args.threads)
    try:
        return _train(args)
    finally:
        torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> TrainResult:
    started = time.perf_counter()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    people = scan(args.data)
    train_ids, val_ids = split(list(people), args.val_fraction, args.seed)
    pre = preprocess_for(args.arch, args.size)
    train_items = [(p, i) for i, name in enumerate(train_ids) for p in people[name]]
    val_items = [(p, i) for i, name in enumerate(val_ids) for p in people[name]]
    print(
        f"{len(train_ids)} identities ({len(train_items)} images) to train on, "
        f"{len(val_ids)} held out ({len(val_items)} images) for calibration"
    )
    tower = EmbeddingTower(args.arch, args.dim, args.width)
    if args.pretrained:
        state = torch.load(args.pretrained, map_location="cpu", weights_only=True)
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        tower.features.load_state_dict(features, strict=True)
    train_set = FaceFolder(train_items, args.size, pre, augment=True)
    p, k = args.pk
    batches = args.steps or max(1, math.ceil(len(train_items) / (p * k)))
    sampler = PKSampler([label for _, label in train_items], p, k, batches, args.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers)
    optimizer = torch.optim.AdamW(tower.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * batches)
    epoch_losses: list[float] = []
    for epoch in range(1, args.epochs + 1):
        tower.train()
        total, active = 0.0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, disable=args.quiet)
        for x, y in bar:
            loss, stats = semi_hard_triplet_loss(tower(x), y, args.margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            active += stats["active"]
            bar.set_postfix(loss=f"{loss.item():.4f}", active=f"{stats['active']:.2f}")
        epoch_losses.append(total / batches)
        print(f"epoch {epoch}: triplet loss {epoch_losses[-1]:.4f}, active {active / batches:.2f}")

    val = FaceFolder(val_items, args.size, pre, augment=False)
    emb = embed_all(tower, val, args.pk[0] * args.pk[1])
    scores, same = pair_scores(emb, np.array([label for _, label in val_items]))
    cal = calibrate(scores, same, args.target_far)
    print(
        f"held-out pairs: {cal['positive_pairs']} same, {cal['negative_pairs']} different; "
        f"ROC AUC {cal['roc_auc']:.4f}; accuracy {cal['accuracy']:.4f} at cosine "
        f"{cal['threshold_accuracy']:.4f}; TAR {cal['tar_at_far']:.4f} at FAR "
        f"{args.target_far:g} (cosine {cal['threshold_at_far']:.4f})"
    )
    chosen = cal["threshold_accuracy" if args.threshold == "accuracy" else "threshold_at_far"]
    rule = "accuracy-maximising" if args.threshold == "accuracy" else f"FAR {args.target_far:g}"
    source = {
        "architecture": f"EmbeddingTower {args.arch} (dim {args.dim}, width {args.width})",
        "weights": "trained by scripts/train/similarity/cli.py (triplet loss, semi-hard mining, "
        f"margin {args.margin})"
        + (f" from {args.pretrained}" if args.pretrained else " from scratch"),
        "training_data": f"{args.data} ({len(train_ids)} identities, {len(train_items)} images)",
        "epochs": args.epochs,
        "final_loss": epoch_losses[-1],
    }
    ckpt = {
        "kind": "face-embedder",
        "arch": args.arch,
        "dim": args.dim,
        "width": args.width,
        "size": [args.size, args.size],
        "preprocess": pre,
        "state_dict": tower.state_dict(),
        "calibration": cal,
        "threshold": {"cosine": chosen, "rule": rule},
        "source": source,
        "epoch_losses": epoch_losses,
    }
    checkpoint = args.checkpoint or Path("runs") / args.name / "tower.pt"
    _save_atomic(ckpt, checkpoint)
    model_dir = export_checkpoint(ckpt, name=args.name, out_dir=args.out)
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
        f"calibrated by scripts/train/similarity/cli.py ({threshold['rule']} threshold) on "
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


def main(argv: list[str] | None = None) -> TrainResult | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train, calibrate and export a tower")
    t.add_argument("data", type=Path, help="folder of <identity>/<image> face crops")
    t.add_argument("--name", required=True, help="model name (folder under --out)")
    t.add_argument("--out", type=Path, default=Path("models"))
    t.add_argument("--checkpoint", type=Path, help="default runs/<name>/tower.pt")
    t.add_argument("--arch", choices=["small", "mobilenet_v2"], default="small")
    t.add_argument("--pretrained", type=Path, help="torchvision mobilenet_v2 state_dict")
    t.add_argument("--size", type=int, default=112, help="input side of the aligned crop")
    t.add_argument("--dim", type=int, default=128)
    t.add_argument("--width", type=int, default=32, help="channels of the small tower")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--steps", type=int, default=0, help="batches per epoch (0: one pass)")
    t.add_argument("--pk", type=int, nargs=2, default=[8, 4], metavar=("P", "K"))
    t.add_argument("--margin", type=float, default=0.2)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument("--target-far", type=float, default=0.01)
    t.add_argument("--threshold", choices=["accuracy", "far"], default="accuracy")
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    hotload.add_arguments(t)

    a = sub.add_parser("align", help="raw photos -> aligned crops for training")
    a.add_argument("raw", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--detector", type=Path, default=Path("models/yunet-2023mar"))
    a.add_argument("--size", type=int, default=112)

    y = sub.add_parser("toy", help="write a tiny generated dataset")
    y.add_argument("out", type=Path)
    y.add_argument("--identities", type=int, default=10)
    y.add_argument("--per-identity", type=int, default=6)
    y.add_argument("--size", type=int, default=32)

    args = parser.parse_args(argv)
    if args.command == "train":
        result = train(args)
        hotload.after_export(args, args.name, result.model_dir)
        return result
    if args.command == "align":
        print(f"{align_dataset(args.raw, args.out, args.detector, args.size)} crops written")
    else:
        make_toy_dataset(args.out, args.identities, args.per_identity, args.size)
        print(f"toy dataset in {args.out}")
    return None
