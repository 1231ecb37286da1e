"""Image classification: top-k labels from a single-logit-vector model.

In the graph: nothing but the network (resize, crop and normalise happen here, per the card).
Card `postprocess.activation`: "softmax" (logits out, default), "sigmoid" (multi-label), or
"none" (the graph already outputs probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.cards import ClassifyPostprocess, ModelCard
from service.images import DecodedImage, EncodedImage
from service.preprocess import to_batch
from service.runtime import ModelRuntime
from service.tasks.pipeline import Outcome, run_image
from service.timing import Timing

Activation = Literal["softmax", "sigmoid", "none"]


@dataclass(frozen=True)
class Predictions:
    """Top-k for one image, best first. class_id: (k,) int64; score: (k,) float32."""

    class_id: np.ndarray
    score: np.ndarray


def activation_of(card: ModelCard) -> Activation:
    """The card's activation (validated when the model loaded)."""
    if not isinstance(card.postprocess, ClassifyPostprocess):
        raise ValueError(f"model {card.name} is a {card.task} model, not classify")
    return card.postprocess.activation


def preprocess(images: Sequence[DecodedImage], card: ModelCard) -> np.ndarray:
    """-> (N, 3, H, W) float32 (or NHWC, per the card)."""
    batch, _ = to_batch(images, card.preprocess)
    return batch


def postprocess(logits: np.ndarray, top_k: int, activation: Activation) -> list[Predictions]:
    """logits: (N, K) -> N Predictions of min(top_k, K) classes each, sorted by score."""
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, K), got {logits.shape}")
    x = logits.astype(np.float32, copy=False)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    elif activation == "sigmoid":
        probs = 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid without exp overflow
    else:
        probs = x
    k = min(top_k, probs.shape[1])
    # argpartition is O(K); only the k survivors get sorted.
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    rows = np.arange(probs.shape[0])[:, None]
    order = np.argsort(-probs[rows, top], axis=1, kind="stable")
    ids = top[rows, order]
    return [Predictions(ids[i].astype(np.int64), probs[i, ids[i]]) for i in range(len(ids))]


async def classify(
    runtime: ModelRuntime, image: DecodedImage | EncodedImage, top_k: int, timing: Timing
) -> Outcome[Predictions]:
    """Top-k for one image (decoded here if still encoded; see service.tasks.pipeline)."""
    card, activation = runtime.card, activation_of(runtime.card)

    def prepare(decoded: DecodedImage) -> tuple[np.ndarray, None]:
        return preprocess([decoded], card), None

    def finish(outputs: list[np.ndarray], _: None) -> Predictions:
        return postprocess(outputs[0], top_k, activation)[0]

    return await run_image(runtime, image, timing, prepare, finish)
