"""INT8 against FP32 on the same images: classifier agreement (top-1, top-5, probabilities)
and detector agreement (matched boxes, recall against hand-drawn truth)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scripts.quantize.calibrate import load_image, mirrored
from scripts.quantize.plan import Runner
from service.cards import ModelCard
from service.images import DecodedImage
from service.preprocess import to_batch


def probabilities(logits: np.ndarray, card: ModelCard) -> np.ndarray:
    """(N, K) logits -> (N, K) probabilities, by the service's own postprocess."""
    from service.tasks.classify import activation_of, postprocess

    out = np.zeros(logits.shape, np.float32)
    for i, pred in enumerate(postprocess(logits, logits.shape[1], activation_of(card))):
        out[i, pred.class_id] = pred.score
    return out


def confident_agreement(rows: list[dict[str, Any]], at: float = 0.5) -> dict[str, Any]:
    """Top-1 agreement on the views where FP32's top-1 probability is at least `at`."""
    sure = [r for r in rows if r["fp32"][1] >= at]
    same = sum(r["fp32"][0] == r["int8"][0] for r in sure)
    return {"fp32_top1_prob_at_least": at, "views": len(sure), "agree": same}


def classify_agreement(card: ModelCard, paths: Sequence[Path]) -> Callable[..., dict[str, Any]]:
    def evaluate(fp32: Runner, int8: Runner) -> dict[str, Any]:
        top1, top5, max_diff, mean_diff, rows = [], [], [], [], []
        for path in tqdm(paths, desc="evaluation photos", unit="img", leave=False):
            image = load_image(path, card)
            for view, tag in ((image, ""), (mirrored(image), " (mirrored)")):
                batch = to_batch([view], card.preprocess)[0]
                p32, p8 = probabilities(fp32(batch), card)[0], probabilities(int8(batch), card)[0]
                a, b = np.argsort(-p32)[:5], np.argsort(-p8)[:5]
                top1.append(bool(a[0] == b[0]))
                top5.append(len(set(a.tolist()) & set(b.tolist())) / 5)
                diff = np.abs(p32 - p8)
                max_diff.append(float(diff.max()))
                mean_diff.append(float(diff.mean()))
                rows.append(
                    {
                        "image": path.name + tag,
                        "fp32": [card.labels[a[0]], round(float(p32[a[0]]), 4)],
                        "int8": [card.labels[b[0]], round(float(p8[b[0]]), 4)],
                    }
                )
        figures = {
            "views": len(top1),
            "top1_agreement": float(np.mean(top1)),
            "top5_overlap": float(np.mean(top5)),
            "max_abs_prob_diff": float(np.max(max_diff)),
            "mean_abs_prob_diff": float(np.mean(mean_diff)),
            "fp32_top1_prob_mean": float(np.mean([r["fp32"][1] for r in rows])),
            # disagreements where FP32 itself hesitates (top-1 under 0.5) matter less
            "top1_agreement_fp32_confident": confident_agreement(rows),
            "per_image": rows,
        }
        figures["table"] = [
            ("top-1 agreement", "", f"{figures['top1_agreement']:.1%}"),
            ("top-5 overlap", "", f"{figures['top5_overlap']:.1%}"),
            (
                "top-1 agreement where FP32 top-1 >= 0.5",
                "",
                "{agree}/{views}".format(**figures["top1_agreement_fp32_confident"]),
            ),
            ("max |prob diff|", "", f"{figures['max_abs_prob_diff']:.4f}"),
            ("mean |prob diff|", "", f"{figures['mean_abs_prob_diff']:.2e}"),
        ]
        return figures

    return evaluate


def detect_once(runner: Runner, card: ModelCard, image: DecodedImage) -> list[dict[str, Any]]:
    """One photo -> the service's detections as [{"box", "label", "score"}] (default options)."""
    from service.tasks.detect import DetectOptions, layout_of, postprocess

    batch, geometries = to_batch([image], card.preprocess)
    (dets,) = postprocess(runner(batch), geometries, DetectOptions(), layout_of(card))
    return [
        {"box": box.tolist(), "label": card.labels[c], "score": float(s)}
        for box, c, s in zip(dets.xyxy, dets.class_id, dets.score, strict=True)
    ]


def match_pairs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """Greedy one-to-one pairs (i, j, IoU) of same-label boxes with IoU >= 0.5, best first."""
    from service.boxes import greedy_pairs, iou

    if not a or not b:
        return []
    overlap = iou(
        np.array([d["box"] for d in a], np.float32), np.array([d["box"] for d in b], np.float32)
    )
    overlap[np.array([[x["label"] != y["label"] for y in b] for x in a])] = 0.0
    return greedy_pairs(overlap)


def detect_agreement(card: ModelCard, paths: Sequence[Path]) -> Callable[..., dict[str, Any]]:
    def evaluate(fp32: Runner, int8: Runner) -> dict[str, Any]:
        from scripts.recipes.detect_truth import TRUTH, match

        n32 = n8 = 0
        ious, score_diffs, per_image, found = [], [], [], {"fp32": [], "int8": []}
        for path in tqdm(paths, desc="evaluation photos", unit="img", leave=False):
            image = load_image(path, card)
            d32, d8 = detect_once(fp32, card, image), detect_once(int8, card, image)
            pairs = match_pairs(d32, d8)
            n32, n8 = n32 + len(d32), n8 + len(d8)
            ious += [v for _, _, v in pairs]
            score_diffs += [abs(d32[i]["score"] - d8[j]["score"]) for i, j, _ in pairs]
            per_image.append(
                {"image": path.name, "fp32": len(d32), "int8": len(d8), "matched": len(pairs)}
            )
            if path.name in TRUTH:
                found["fp32"] += match(TRUTH[path.name], d32)
                found["int8"] += match(TRUTH[path.name], d8)
        recall = {k: sum(f >= 0.5 for f in v) / len(v) if v else None for k, v in found.items()}
        out: dict[str, Any] = {
            "photos": len(paths),
            "options": "service defaults: score >= 0.25, NMS IoU 0.45, at most 100",
            "fp32_detections": n32,
            "int8_detections": n8,
            "matched": len(ious),
            "fp32_reproduced": len(ious) / n32 if n32 else None,
            "int8_matched": len(ious) / n8 if n8 else None,
            "matched_mean_iou": float(np.mean(ious)) if ious else None,
            "matched_mean_abs_score_diff": float(np.mean(score_diffs)) if score_diffs else None,
            "hand_boxes": len(found["fp32"]),
            "recall_iou50": recall,
            "hand_boxes_from": "scripts/recipes/detect_truth.py TRUTH",
            "per_image": per_image,
        }
        out["table"] = [
            ("detections", str(n32), str(n8)),
            ("FP32 detections kept (IoU>=0.5, same label)", "", f"{out['fp32_reproduced']:.1%}"),
            ("mean IoU of matched pairs", "", f"{out['matched_mean_iou']:.3f}"),
            (
                f"recall@0.5 on {out['hand_boxes']} hand boxes",
                f"{recall['fp32']:.3f}",
                f"{recall['int8']:.3f}",
            ),
        ]
        return out

    return evaluate
