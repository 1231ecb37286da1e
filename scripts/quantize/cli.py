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
import json
from pathlib import Path
from typing import Any

from onnxruntime.quantization import (
    CalibrationMethod,
)

from scripts.quantize.elpv import ELPV_CALIBRATION_CELLS
from scripts.quantize.plan import Config
from scripts.quantize.quantize import quantize_model


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
