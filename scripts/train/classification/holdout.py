"""A held-out test split, measured on the exported ONNX model exactly as the service runs it
(the service's decode and preprocessing, onnxruntime on the CPU), with its report: metrics,
a confusion-matrix PNG and a grid of the misclassified images.

The trainer only ever sees train/ and val/; the test images are read here, once, after
the model is exported, so they cannot leak into training, early stopping or model choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.constants import IMAGE_SUFFIXES
from scripts.train.classification.data import Sample, Transforms, load


@dataclass(frozen=True)
class Predictions:
    """probs: (N, K) float32 softmax scores; pred / true: (N,) int64."""

    samples: list[Sample]
    probs: np.ndarray
    pred: np.ndarray
    true: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.pred == self.true).mean()) if len(self.true) else float("nan")


def samples_in(folder: Path, classes: list[str]) -> list[Sample]:
    """folder/<class>/<image> for the given class order (a class folder may be absent)."""
    return [
        Sample(p, i)
        for i, c in enumerate(classes)
        if (folder / c).is_dir()
        for p in sorted((folder / c).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def predict_onnx(
    onnx_path: Path, samples: list[Sample], transforms: Transforms, *, batch: int = 16
) -> Predictions:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chunks = []
    for start in range(0, len(samples), batch):
        part = samples[start : start + batch]
        x = np.stack([transforms.eval(load(s.path, transforms.min_side)).numpy() for s in part])
        (logits,) = session.run(None, {name: x})
        z = logits - logits.max(1, keepdims=True)
        chunks.append(np.exp(z) / np.exp(z).sum(1, keepdims=True))
    probs = np.concatenate(chunks).astype(np.float32)
    true = np.array([s.label for s in samples], dtype=np.int64)
    return Predictions(samples, probs, probs.argmax(1).astype(np.int64), true)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Counts, with each row's recall in brackets (row = true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    side = 2.8 + 0.9 * k
    fig, ax = plt.subplots(figsize=(side, side))
    rates = matrix / np.maximum(1, matrix.sum(1, keepdims=True))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            colour = "white" if rates[i, j] > 0.5 else "black"
            text = f"{matrix[i, j]}\n({rates[i, j]:.0%})"
            ax.text(j, i, text, ha="center", va="center", color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def misclassified_grid(
    p: Predictions, classes: list[str], path: Path, *, limit: int = 36, columns: int = 6
) -> int:
    """A PNG grid of up to `limit` misclassified images, the most confident mistakes first,
    each titled "true -> predicted (score)". Returns how many images are wrong in all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(p.pred != p.true)
    wrong = wrong[np.argsort(-p.probs[wrong, p.pred[wrong]])][:limit]
    rows = max(1, math.ceil(len(wrong) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        s = p.samples[i]
        ax.imshow(load(s.path, None).pixels)
        ax.set_title(
            f"{s.path.stem}\n{classes[p.true[i]]} -> {classes[p.pred[i]]} "
            f"({p.probs[i, p.pred[i]]:.2f})",
            fontsize=7,
        )
    if not len(wrong):
        axes.flat[0].set_title("no misclassified images")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return int((p.pred != p.true).sum())
