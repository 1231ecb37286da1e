"""Static INT8 quantisation of a served model (onnxruntime.quantization, QDQ, per-channel
weights), calibrated on real images and measured against the FP32 model on other real images.

    python -m scripts quantize models/vgg16-elpv                    # -> models/vgg16-elpv-int8
    python -m scripts quantize models/mobilenet_v2-imagenet --json artifacts/quantize-mnv2.json
    python -m scripts quantize models/yolov3-tiny-coco --calibration my_photos/

What each model is calibrated on and measured with is chosen from its card:
    ELPV classifiers (source.training_data.dataset ELPV): calibration on training-split cells
        of labels.csv, test accuracy FP32 vs INT8 on the fixed test split (row % 4 == 0).
    other classifiers: calibration on scikit-image's bundled photos (mirrored too), agreement
        (top-1, top-5 overlap, probability difference) on the photos of scripts/recipes/defaults.py
        TEST_DATA and their mirror images.
    detectors: the same photos; INT8 vs FP32 detections matched at IoU >= 0.5 with the same
        label, and recall against scripts/recipes/detect_truth.py's hand-drawn boxes.
--calibration DIR replaces the calibration images (never the evaluation set: an image found in
both is refused). Every image goes through the service's decode and the task's preprocess. The
new folder is a copy of the card with the name changed and a `quantization` block holding the
method, the calibration images and the measured figures; it is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from service.cards import ModelCard, read_card
from service.images import DecodedImage, decode
from service.preprocess import to_batch

MAX_PIXELS = 40_000_000  # the service's default Settings.max_pixels
HEAVY_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# scikit-image's bundled photographs (BSD licence, installed with the package: no download).
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
    "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip
# scripts/recipes/defaults.py TEST_DATA photos: Darknet's samples and face_recognition's portraits.
EVAL_PHOTOS = (
    "dog.jpg", "person.jpg", "horses.jpg", "giraffe.jpg", "eagle.jpg", "kite.jpg",
    "obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg",
)  # fmt: skip
ELPV_CALIBRATION_CELLS = 160


@dataclass(frozen=True)
class Config:
    """How quantize_static is called; recorded in the card."""

    calibrate_method: str | None = None  # None: the model's recipe picks (Plan.method)
    per_channel: bool = True
    activation_symmetric: bool = False
    # The classifier head (Gemm) stays float: a few FLOPs, most of the error (VGG16-ELPV test
    # accuracy -3.8 points with it quantised, -0.2 without; MobileNetV2 similar)
    exclude_op_types: tuple[str, ...] = ("Gemm",)
    threads: int = 2


@dataclass
class Runner:
    """One onnxruntime CPU session over a model file, fed the card's input name."""

    session: ort.InferenceSession
    input_name: str

    @classmethod
    def open(cls, path: Path, card: ModelCard, threads: int) -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session, card.inputs[0].name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])


@dataclass
class Plan:
    """What one model is calibrated on and how its INT8 copy is measured against FP32.

    calibration: (1, C, H, W) float32 tensors. evaluate(fp32, int8) -> figures; its "table"
    entry is a list of (metric, fp32, int8) rows for the printout. method: the calibration
    method this recipe uses unless --method says otherwise, and why."""

    calibration: list[np.ndarray]
    calibration_info: dict[str, Any]
    evaluate: Callable[[Runner, Runner], dict[str, Any]]
    evaluation_files: list[Path] = field(default_factory=list)
    method: tuple[str, str] = ("MinMax", "onnxruntime's default")


# ---------------------------------------------------------------- images -> tensors


def load_image(path: Path, card: ModelCard) -> DecodedImage:
    """The service's decode, at the reduced JPEG scale the service would use for this card."""
    from service.routes.common import needed_side

    return decode(path.read_bytes(), max_pixels=MAX_PIXELS, min_side=needed_side(card))


def mirrored(image: DecodedImage) -> DecodedImage:
    return DecodedImage(image.pixels[:, ::-1].copy(), image.width, image.height, image.format)


def tensors_of(paths: Sequence[Path], card: ModelCard, *, mirror: bool) -> list[np.ndarray]:
    out = []
    for path in tqdm(paths, desc="calibration images", unit="img", leave=False):
        image = load_image(path, card)
        for view in [image, mirrored(image)] if mirror else [image]:
            out.append(to_batch([view], card.preprocess)[0])
    return out


def images_in(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SystemExit(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def skimage_photos() -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in SKIMAGE_PHOTOS]


def eval_photos() -> list[Path]:
    from scripts.recipes.defaults import testdata_path

    paths = [testdata_path(name) for name in EVAL_PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"test photos missing: {missing}; run python -m scripts build-models")
    return paths


def photo_calibration(
    card: ModelCard, calibration: str, limit: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    if calibration == "builtin":
        paths, source = skimage_photos(), "scikit-image bundled photos (skimage/data)"
    else:
        paths, source = images_in(Path(calibration))[:limit], str(calibration)
    info = {
        "images": len(paths),
        "tensors": 2 * len(paths),
        "source": source,
        "files": [p.name for p in paths],
        "views": "each image and its mirror image",
    }
    return tensors_of(paths, card, mirror=True), info


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_disjoint(calibration: Sequence[str], evaluation: Sequence[Path]) -> None:
    """Refuse an evaluation image that is also a calibration image (same bytes)."""
    calib = {_digest(Path(p)) for p in calibration}
    shared = [p.name for p in evaluation if _digest(p) in calib]
    if shared:
        raise SystemExit(f"calibration and evaluation share images: {shared}")


# ---------------------------------------------------------------- classifiers on photos


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


# ---------------------------------------------------------------- ELPV solar cells


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


# ---------------------------------------------------------------- detectors


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


def plan_for(card: ModelCard, calibration: str, limit: int) -> Plan:
    """Pick the calibration set and the measurement from the card."""
    if card.task == "classify" and is_elpv(card):
        plan = elpv_plan(card, calibration, limit)
    elif card.task in ("classify", "detect"):
        tensors, info = photo_calibration(card, calibration, limit)
        evaluation = eval_photos()
        measure = classify_agreement if card.task == "classify" else detect_agreement
        why = (
            "Percentile (99.999, symmetric): on MobileNetV2 it kept 90% top-1 agreement where "
            "MinMax kept 85% (Entropy gave MinMax's model); on YOLOv3-tiny it reproduced 30/30 "
            "FP32 detections, MinMax 29/30"
        )
        plan = Plan(tensors, info, measure(card, evaluation), evaluation, ("Percentile", why))
        plan.calibration_info["evaluation_images"] = {
            "count": len(evaluation),
            "views": 2 * len(evaluation) if card.task == "classify" else len(evaluation),
            "source": "recipes/defaults.py TEST_DATA: Darknet sample photos (Debian darknet) "
            "and face_recognition 1.3.0 test portraits",
            "files": [p.name for p in evaluation],
        }
    else:
        raise SystemExit(f"{card.name}: no calibration/evaluation recipe for task {card.task!r}")
    if calibration != "builtin":
        check_disjoint(
            [str(p) for p in images_in(Path(calibration))[:limit]], plan.evaluation_files
        )
    return plan


# ---------------------------------------------------------------- quantisation


class TensorReader(CalibrationDataReader):
    """Feeds the calibration tensors one at a time, with a progress bar."""

    def __init__(self, input_name: str, tensors: list[np.ndarray]) -> None:
        self._items: Iterator[np.ndarray] = iter(
            tqdm(tensors, desc="calibrating", unit="img", leave=False)
        )
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._items, None)
        return None if item is None else {self._name: item}


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes after the last Conv/Gemm/MatMul on every path to the outputs (a YOLO head's box
    decode): quantising them would put pixel coordinates and probabilities on one int8 scale."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_heavy: dict[int, bool] = {}
    for node in reversed(model.graph.node):  # ONNX nodes are topologically sorted
        after = [c for out in node.output for c in consumers.get(out, [])]
        feeds_heavy[id(node)] = any(c.op_type in HEAVY_OPS or feeds_heavy[id(c)] for c in after)
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in HEAVY_OPS and not feeds_heavy[id(n)] and n.name
    ]


def quantize_onnx(
    src: Path, dst: Path, card: ModelCard, plan: Plan, config: Config
) -> dict[str, Any]:
    """src (FP32) -> dst (QDQ INT8); returns the method as recorded in the card."""
    prepped = dst.with_name("prepped.onnx")
    # Symbolic shape inference is for transformers' dynamic shapes; on the YOLO head decode it
    # fails (and leaves sym_shape_infer_temp.onnx in the working directory). ONNX's own shape
    # inference covers these CNNs.
    quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
    model = onnx.load(str(prepped))
    exclude = tail_nodes(model)
    exclude += [n.name for n in model.graph.node if n.op_type in config.exclude_op_types]
    method = config.calibrate_method or plan.method[0]
    reason = "--method" if config.calibrate_method else plan.method[1]
    # Not CalibMaxIntermediateOutputs: onnxruntime 1.31's MinMax calibrator drops (instead of
    # merging) each full chunk of collected ranges, so only the last partial chunk would count.
    extra = {"ActivationSymmetric": config.activation_symmetric}
    started = time.perf_counter()
    quantize_static(
        str(prepped),
        str(dst),
        TensorReader(card.inputs[0].name, plan.calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod[method],
        nodes_to_exclude=exclude,
        extra_options=extra,
    )
    prepped.unlink()
    return {
        "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
        "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process "
        "(graph optimisation, ONNX shape inference; symbolic shape inference skipped)",
        "format": "QDQ",
        "activations": "int8 per tensor",
        "weights": "int8 " + ("per channel" if config.per_channel else "per tensor"),
        "calibrate_method": method,
        "calibrate_method_reason": reason,
        "extra_options": {"ActivationSymmetric": config.activation_symmetric},
        "excluded_op_types": list(config.exclude_op_types),
        "nodes_left_in_float": len(exclude),
        "seconds": round(time.perf_counter() - started, 1),
    }


def median_ms(fp32: Runner, int8: Runner, tensor: np.ndarray, runs: int) -> dict[str, float]:
    """Median session.run time of each model at batch 1, alternating runs so that load from
    other processes hits both alike."""
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for i in range(runs + 3):
        for name, runner in (("fp32", fp32), ("int8", int8)):
            started = time.perf_counter()
            runner(tensor)
            if i >= 3:  # warm-up
                times[name].append((time.perf_counter() - started) * 1000)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def count_qdq(path: Path) -> dict[str, int]:
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    return {op: ops.count(op) for op in ("QuantizeLinear", "DequantizeLinear")}


def quantize_model(
    src_dir: Path,
    out_dir: Path,
    *,
    calibration: str = "builtin",
    limit: int = ELPV_CALIBRATION_CELLS,
    config: Config = Config(),
    runs: int = 30,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """models/<name> -> out_dir (model.onnx INT8 + card with a `quantization` block); returns
    the report: the card's block plus the printed table. plan: what to calibrate on and measure
    (default: chosen from the card by plan_for)."""
    from scripts.export.common import write_model_dir

    loaded = read_card(src_dir)
    card = loaded.card
    plan = plan or plan_for(card, calibration, limit)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        int8_path = Path(tmp) / "model.onnx"
        method = quantize_onnx(loaded.onnx_path, int8_path, card, plan, config)
        fp32 = Runner.open(loaded.onnx_path, card, config.threads)
        int8 = Runner.open(int8_path, card, config.threads)
        evaluation = plan.evaluate(fp32, int8)
        latency = median_ms(fp32, int8, plan.calibration[0], runs)
        onnx_bytes = int8_path.read_bytes()
        method["qdq_nodes"] = count_qdq(int8_path)
    table = evaluation.pop("table")
    block: dict[str, Any] = {
        "source_model": card.name,
        "note": "export and evaluation above describe the FP32 source model",
        "method": method,
        "calibration": plan.calibration_info,
        "accuracy_vs_fp32": evaluation,
        "session_run_ms": {
            **latency,
            "batch": 1,
            "runs": runs,
            "threads": config.threads,
            "load_average": round(os.getloadavg()[0], 2),
        },
        "onnx_bytes": {"fp32": loaded.onnx_path.stat().st_size, "int8": len(onnx_bytes)},
    }
    raw = json.loads((src_dir / "model.json").read_text(encoding="utf-8"))
    raw["name"] = out_dir.name
    raw["quantization"] = block
    write_model_dir(out_dir.parent, out_dir.name, onnx_bytes, raw)
    read_card(out_dir)  # the written card validates
    table += [
        ("session.run median ms (batch 1)", f"{latency['fp32']}", f"{latency['int8']}"),
        (
            "model.onnx MB",
            f"{block['onnx_bytes']['fp32'] / 1e6:.1f}",
            f"{len(onnx_bytes) / 1e6:.1f}",
        ),
    ]
    return {"model": str(out_dir), **block, "table": table}


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['source_model']} -> {report['model']}")
    print("| metric | FP32 | INT8 |\n|---|---|---|")
    for metric, a, b in report["table"]:
        print(f"| {metric} | {a} | {b} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("model", type=Path, help="a model folder: model.onnx + model.json")
    p.add_argument("--calibration", default="builtin", help="'builtin' (default) or a folder")
    p.add_argument("--limit", type=int, default=ELPV_CALIBRATION_CELLS, help="calibration images")
    p.add_argument("--out-dir", type=Path, help="default: <model>-int8 beside the model")
    p.add_argument("--json", type=Path, help="write the report here too")
    p.add_argument(
        "--method", choices=[m.name for m in CalibrationMethod], help="default: per model"
    )
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights")
    p.add_argument("--symmetric-activations", action="store_true")
    p.add_argument(
        "--keep-float", default="Gemm", help="comma list of op types left in float ('' for none)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30, help="timed session.run calls per model")
    args = p.parse_args(argv)
    src = args.model.resolve()
    config = Config(
        calibrate_method=args.method,
        per_channel=not args.per_tensor,
        activation_symmetric=args.symmetric_activations,
        exclude_op_types=tuple(op for op in args.keep_float.split(",") if op),
        threads=args.threads,
    )
    out_dir = args.out_dir or src.with_name(f"{src.name}-int8")
    report = quantize_model(
        src, out_dir, calibration=args.calibration, limit=args.limit, config=config, runs=args.runs
    )
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
