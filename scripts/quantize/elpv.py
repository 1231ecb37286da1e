"""The ELPV solar-cell classifiers: calibrated on training-split cells, measured on the fixed
test split (labels.csv rows r with r % 4 == 0), as build-elpv measured them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scripts.quantize.calibrate import images_in, load_image, tensors_of
from scripts.quantize.evaluate import probabilities
from scripts.quantize.plan import Plan, Runner
from service.cards import ModelCard
from service.preprocess import to_batch

ELPV_CALIBRATION_CELLS = 160


def is_elpv(card: ModelCard) -> bool:
    data = card.source.get("training_data")
    return isinstance(data, dict) and str(data.get("dataset", "")).startswith("ELPV")


def elpv_cells(card: ModelCard) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(train, test) cells of the card's variant as (image path, class index in card.labels)."""
    from scripts.constants import CACHE
    from scripts.recipes import elpv_data as elpv

    variant = card.source["training_data"].get("variant", "binary")
    cells, data = elpv.extract(elpv.fetch_wheel(), CACHE / "data" / "elpv" / "extracted")
    split: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for cell in cells:
        label = elpv.label_of(variant, cell.probability)
        if label is not None and cell.split in split:
            split[cell.split].append((data / cell.name, card.labels.index(label)))
    return split["train"], split["test"]


def elpv_plan(card: ModelCard, calibration: str, limit: int) -> Plan:
    train, test = elpv_cells(card)
    if calibration == "builtin":
        step = max(1, len(train) // limit)
        chosen = train[::step][:limit]
        paths = [p for p, _ in chosen]
        info: dict[str, Any] = {
            "images": len(paths),
            "tensors": len(paths),
            "source": "ELPV training split (labels.csv rows r % 4 != 0 and r % 8 != 2), every "
            f"{step}th training cell of the variant by row",
            "classes": {
                card.labels[k]: sum(1 for _, c in chosen if c == k) for k in range(len(card.labels))
            },
            "files": [p.name for p in paths],
        }
    else:
        paths = images_in(Path(calibration))[:limit]
        info = {"images": len(paths), "tensors": len(paths), "source": calibration}
    tensors = tensors_of(paths, card, mirror=False)
    # Histogram methods (Percentile, Entropy) keep every activation of every calibration image
    # in memory: ~17 GB for VGG16 on 160 cells. MinMax keeps two numbers per tensor.
    why = "MinMax: histogram methods would hold ~108 MB of VGG16 activations per cell"
    return Plan(tensors, info, elpv_test(card, test), [p for p, _ in test], ("MinMax", why))


def elpv_test(
    card: ModelCard, test: list[tuple[Path, int]], batch: int = 8
) -> Callable[..., dict[str, Any]]:
    def evaluate(fp32: Runner, int8: Runner) -> dict[str, Any]:
        from scripts.train.classification.report import metrics

        truth = np.array([c for _, c in test])
        probs: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
        for start in tqdm(range(0, len(test), batch), desc="ELPV test cells", unit="batch"):
            images = [load_image(p, card) for p, _ in test[start : start + batch]]
            tensor = to_batch(images, card.preprocess)[0]
            probs["fp32"].append(probabilities(fp32(tensor), card))
            probs["int8"].append(probabilities(int8(tensor), card))
        p32, p8 = np.concatenate(probs["fp32"]), np.concatenate(probs["int8"])
        out: dict[str, Any] = {"test_cells": len(test)}
        for name, p in (("fp32", p32), ("int8", p8)):
            m = metrics(truth, p.argmax(1), list(card.labels))
            out[name] = {
                "accuracy": m["accuracy"],
                "recall": {c: v["recall"] for c, v in m["per_class"].items()},
                "confusion_matrix": m["confusion_matrix"],
            }
        out["accuracy_change"] = out["int8"]["accuracy"] - out["fp32"]["accuracy"]
        out["prediction_agreement"] = float((p32.argmax(1) == p8.argmax(1)).mean())
        out["max_abs_prob_diff"] = float(np.abs(p32 - p8).max())
        out["mean_abs_prob_diff"] = float(np.abs(p32 - p8).mean())
        card_evaluation = (card.model_extra or {}).get("evaluation") or {}
        if "test" in card_evaluation:  # what build_elpv.py measured (its own loader)
            out["fp32_card_accuracy"] = card_evaluation["test"]["accuracy"]
        out["split"] = "labels.csv rows r % 4 == 0 (the card's test split), none calibrated on"
        out["table"] = [
            ("test accuracy", f"{out['fp32']['accuracy']:.2%}", f"{out['int8']['accuracy']:.2%}"),
            *(
                (
                    f"recall {c}",
                    f"{out['fp32']['recall'][c]:.2%}",
                    f"{out['int8']['recall'][c]:.2%}",
                )
                for c in card.labels
            ),
            ("prediction agreement", "", f"{out['prediction_agreement']:.2%}"),
            ("max |prob diff|", "", f"{out['max_abs_prob_diff']:.4f}"),
        ]
        return out

    return evaluate
