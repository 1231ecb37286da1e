"""What every exporter shares: torch -> ONNX with a dynamic batch axis, `onnx.checker`, a parity
check of onnxruntime against PyTorch, and an atomic write of `model.onnx` + `model.json`.

Needs torch and onnx (the `export` extra); the service never imports this.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 17


@dataclass(frozen=True)
class Parity:
    """Largest |onnxruntime - torch| over every output, on `batch` random inputs."""

    max_abs_diff: float
    batch: int
    tolerance: float

    def as_card(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "batch": self.batch, "tolerance": self.tolerance}


def to_onnx_bytes(
    model: torch.nn.Module,
    example: torch.Tensor,
    *,
    input_name: str,
    output_names: Sequence[str],
    opset: int = OPSET,
) -> bytes:
    """Trace `model` on `example` (N, ...) and return a checked ONNX model with batch axis 0
    dynamic on the input and every output."""
    model.eval()
    dynamic_axes = {input_name: {0: "batch"}} | {name: {0: "batch"} for name in output_names}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            buffer,
            opset_version=opset,
            dynamo=False,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def check_parity(
    model: torch.nn.Module,
    onnx_bytes: bytes,
    inputs: torch.Tensor,
    *,
    tolerance: float,
) -> Parity:
    """Run `inputs` (N, ...) through torch and onnxruntime (CPU); raise if they disagree."""
    model.eval()
    with torch.no_grad():
        expected = model(inputs)
    expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    worst = 0.0
    for want, have in zip(expected_list, got, strict=True):
        if tuple(want.shape) != tuple(have.shape):
            raise RuntimeError(f"onnx output shape {have.shape} != torch {tuple(want.shape)}")
        worst = max(worst, float(np.max(np.abs(want.numpy() - have))) if have.size else 0.0)
    if not worst <= tolerance:
        raise RuntimeError(f"onnxruntime differs from torch by {worst:.3g} > {tolerance:g}")
    return Parity(max_abs_diff=worst, batch=int(inputs.shape[0]), tolerance=tolerance)


def export_info(parity: Parity, opset: int = OPSET, **extra: Any) -> dict[str, Any]:
    import torchvision

    return {
        "tool": "python -m scripts export",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opset": opset,
        "parity_vs_torch": parity.as_card(),
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def golden_example(onnx_bytes: bytes, card: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A seeded batch-1 input and onnxruntime's outputs for it, which the service replays when it
    loads the model (a model that answers differently there is refused). None when an output's
    size depends on the input's content (Mask R-CNN's detections): no fixed answer to hold."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    if any(not all(isinstance(d, int) for d in o.shape[1:]) for o in session.get_outputs()):
        return None
    meta = session.get_inputs()[0]
    size = card.get("preprocess", {}).get("size")
    layout = card.get("preprocess", {}).get("layout", "NCHW")
    shape = [
        1 if i == 0 or not isinstance(d, int) or d <= 0 else d for i, d in enumerate(meta.shape)
    ]
    if size and len(shape) == 4:
        h_axis = 2 if layout == "NCHW" else 1
        shape[h_axis], shape[h_axis + 1] = size
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.5
    outputs = session.run(None, {meta.name: x})
    return {"input": x} | {
        f"output:{o.name}": np.asarray(v)
        for o, v in zip(session.get_outputs(), outputs, strict=True)
    }


def write_model_dir(out_root: Path, name: str, onnx_bytes: bytes, card: dict[str, Any]) -> Path:
    """Write out_root/name/{model.onnx, model.json[, golden.npz]} so that a reader sees the old
    model or the new one, never half of either: build in a temp folder beside it, then rename.

    The card is checked against the service's own typed schema first (the same one the service
    loads it with), and stamped with the current schema version."""
    from service.cards import GOLDEN_FILE, SCHEMA_VERSION, parse_card

    card = {**card, "schema_version": SCHEMA_VERSION}
    golden = golden_example(onnx_bytes, card)
    if golden is not None:
        card["golden"] = {"file": GOLDEN_FILE, "rtol": 1e-3, "atol": 1e-3}
    parse_card(card)  # raises CardError naming the field: never write a card the service refuses
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_root))
    try:
        (tmp / "model.onnx").write_bytes(onnx_bytes)
        if golden is not None:
            np.savez(tmp / GOLDEN_FILE, **golden)
        (tmp / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if final.exists():
            old = out_root / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:  # Ctrl-C included: leave no half-written model behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
