"""Run the frozen part of the network once and keep its activations.

With the backbone (or its first blocks) frozen, every epoch would recompute the same
activations; on a CPU that is nearly all of the training time. Instead each training image is
pushed through the frozen blocks for a few views (view 0 clean, the others augmented), the
results kept in memory (and on disk under the run folder, so --resume and a re-run skip it),
and each epoch draws one view per image. Training the head then takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scripts.train.classification.data import ImageSet, Sample, Transforms
from scripts.train.classification.precision import autocast


def _key(parts: dict[str, Any], samples: list[Sample]) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for s in samples:
        st = s.path.stat()
        h.update(f"{s.path}|{st.st_size}|{st.st_mtime_ns}|{s.label}\n".encode())
    return h.hexdigest()[:20]


def _batches(
    samples: list[Sample], transforms: Transforms, *, augment: bool, batch_size: int
) -> Iterator[torch.Tensor]:
    images = ImageSet(samples, transforms, train=augment)
    for start in range(0, len(images), batch_size):
        yield torch.stack(
            [images[i][0] for i in range(start, min(start + batch_size, len(images)))]
        )


@dataclass(eq=False)
class ActivationCache:
    """Activations of `frozen` per (split, view), keyed by everything that changes them.

    pool: average-pool to (C, 1, 1) as they are stored (the head pools first anyway), which
    makes the fully-frozen case tiny."""

    frozen: nn.Module
    transforms: Transforms
    _: KW_ONLY
    identity: dict[str, Any]
    folder: Path | None
    pool: bool
    batch_size: int
    seed: int
    quiet: bool = False
    precision: str = "fp32"
    _memory: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def bytes_per_image(self, sample: Sample) -> int:
        with torch.no_grad():
            out = self._run(next(_batches([sample], self.transforms, augment=False, batch_size=1)))
        return out[0].numel() * out.element_size()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        self.frozen.eval()
        with torch.no_grad(), autocast(self.precision):
            y = self.frozen(x).float()
        return F.adaptive_avg_pool2d(y, 1) if self.pool else y

    def get(self, split: str, samples: list[Sample], view: int) -> torch.Tensor:
        """(N, C, h, w) activations of `samples`; view 0 clean, view > 0 augmented with a
        seed fixed by (seed, view), so a rebuild gives the same values."""
        parts = {"pool": self.pool, "view": view, "seed": self.seed, "precision": self.precision}
        key = _key(self.identity | parts, samples)
        if key in self._memory:
            return self._memory[key]
        path = self.folder / f"{split}-v{view}-{key}.pt" if self.folder else None
        if path is not None and path.is_file():
            out: torch.Tensor = torch.load(path, map_location="cpu", weights_only=True)
        else:
            if view:
                torch.manual_seed(self.seed * 1009 + view)
            chunks = []
            steps = math.ceil(len(samples) / self.batch_size)
            desc = f"caching {split} activations" + (f" (view {view})" if view else "")
            for x in tqdm(
                _batches(samples, self.transforms, augment=view > 0, batch_size=self.batch_size),
                total=steps,
                desc=desc,
                unit="batch",
                leave=False,
                disable=self.quiet,
            ):
                chunks.append(self._run(x))
            out = torch.cat(chunks)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".part")
                torch.save(out, tmp)
                tmp.replace(path)
        self._memory[key] = out
        return out

    def views(self, split: str, samples: list[Sample], count: int) -> torch.Tensor:
        """(count, N, ...) stacked views."""
        return torch.stack([self.get(split, samples, v) for v in range(count)])


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    weight_decay: float = 1e-3,
) -> float:
    """Validation accuracy of a multinomial logistic regression on pooled features
    ((N, C, ...) flattened), fit with L-BFGS on standardised inputs."""
    xtr, xva = train_x.flatten(1), val_x.flatten(1)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    torch.manual_seed(seed)
    linear = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(xtr), train_y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return float((linear(xva).argmax(1) == val_y).float().mean())
