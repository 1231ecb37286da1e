"""Batch sources for the loop: cached frozen activations, or images through the frozen blocks
on the fly (the `full` strategy, or when the cache would not fit in --cache-mb)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from scripts.train.classification.data import ImageSet
from scripts.train.classification.precision import autocast

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(eq=False)
class CachedSource:
    """train_views: (V, N, ...) activations, view 0 clean; each epoch draws one view per image.
    val: (M, ...) clean activations."""

    train_views: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    batch_size: int

    def train_batches(self, order: torch.Tensor, generator: torch.Generator) -> Iterator[Batch]:
        views = torch.randint(0, self.train_views.shape[0], (len(order),), generator=generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.train_views[views[start : start + len(idx)], idx], self.train_labels[idx]

    def val_batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.val), self.batch_size):
            end = start + self.batch_size
            yield self.val[start:end], self.val_labels[start:end]


@dataclass(eq=False)
class ImageSource:
    """Decodes (and augments) images per batch and runs `frozen` on them without gradients."""

    train: ImageSet
    val: ImageSet
    frozen: nn.Module
    batch_size: int
    workers: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.train_labels = torch.tensor([s.label for s in self.train.samples])

    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.precision):
            return self.frozen(x).float()  # type: ignore[no-any-return]

    def train_batches(self, order: torch.Tensor, generator: torch.Generator) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.train,
            batch_size=self.batch_size,
            sampler=order.tolist(),
            num_workers=self.workers,
            generator=generator,
        )
        for x, y in loader:
            yield self._frozen(x), y

    def val_batches(self) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.val, batch_size=self.batch_size, num_workers=self.workers
        )
        for x, y in loader:
            yield self._frozen(x), y
