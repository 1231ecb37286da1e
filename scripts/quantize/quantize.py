"""Quantise one model: pick its plan from the card, run quantize_static (QDQ, per-channel
weights), time and measure the INT8 copy, write it beside the FP32 folder with a
`quantization` block in its card."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
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

from scripts.quantize.calibrate import check_disjoint, eval_photos, images_in, photo_calibration
from scripts.quantize.elpv import ELPV_CALIBRATION_CELLS, elpv_plan, is_elpv
from scripts.quantize.evaluate import classify_agreement, detect_agreement
from scripts.quantize.plan import Config, Plan, Runner
from service.cards import ModelCard, read_card

HEAVY_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})


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
    config: Config | None = None,
    runs: int = 30,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """models/<name> -> out_dir (model.onnx INT8 + card with a `quantization` block); returns
    the report: the card's block plus the printed table. plan: what to calibrate on and measure
    (default: chosen from the card by plan_for)."""
    from scripts.export.common import write_model_dir

    config = config or Config()
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
