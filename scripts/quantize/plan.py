"""What quantising one model means: how quantize_static is called (Config), a session over a
model file (Runner), and what the model is calibrated on and measured with (Plan)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.cards import ModelCard


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
