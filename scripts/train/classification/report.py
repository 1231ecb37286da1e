"""Validation report: accuracy, per-class precision/recall, confusion matrix and training curves
(PNGs), and a JSON summary of the whole run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scripts.train.classification.data import Dataset, Transforms


def confusion(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64; row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def metrics(true: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / F1 / support, and the confusion matrix.
    A class never predicted has precision 0 (not NaN), as scikit-learn's zero_division=0."""
    m = confusion(true, pred, len(classes))
    tp = np.diag(m).astype(np.float64)
    predicted, support = m.sum(0), m.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(1, m.sum())),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": m.tolist(),
    }


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    side = min(16.0, 2.5 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("validation confusion matrix")
    top = matrix.max() or 1
    if k <= 30:
        for i in range(k):
            for j in range(k):
                colour = "white" if matrix[i, j] > top / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        acc_ax.plot(epochs, [h[f"{split}_acc"] for h in history], marker="o", label=split)
    loss_ax.set_title("loss")
    acc_ax.set_title("accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(run_dir: Path, summary: dict[str, Any], history: list[dict[str, float]]) -> None:
    """run_dir/{summary.json, confusion.png, curves.png}."""
    classes = summary["dataset"]["classes"]
    plot_confusion(
        np.asarray(summary["val"]["confusion_matrix"]), classes, run_dir / "confusion.png"
    )
    plot_curves(history, run_dir / "curves.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def print_metrics(m: dict[str, Any]) -> None:
    print(f"validation accuracy {m['accuracy']:.1%}")
    width = max(len(c) for c in m["per_class"])
    print(f"  {'class':<{width}}  precision  recall  support")
    for c, v in m["per_class"].items():
        print(f"  {c:<{width}}  {v['precision']:9.1%}  {v['recall']:6.1%}  {v['support']:7d}")


def onnx_accuracy(onnx_path: Path, ds: Dataset, transforms: Transforms) -> float:
    """Accuracy of the exported graph in onnxruntime on the validation images, preprocessed
    exactly as the service does it."""
    import onnxruntime as ort
    import torch

    from scripts.train.classification.data import ImageSet

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    val = ImageSet(ds.val, transforms, train=False)
    correct = 0
    for start in range(0, len(val), 32):
        items = [val[i] for i in range(start, min(start + 32, len(val)))]
        x = torch.stack([t for t, _ in items]).numpy()
        (logits,) = session.run(None, {"input": x})
        correct += int((np.argmax(logits, 1) == np.array([y for _, y in items])).sum())
    return correct / len(val)
