"""What a model must pass before it takes traffic, beyond a valid card: the card agrees with the
graph, the warm-up input gives finite outputs of the shapes the task reads, and the card's golden
example (input and the outputs the exporter saw) still comes out the same.

Every failure raises `CardError(field, reason)`, so the repository reports which part of the
model folder is wrong; a model that passes cannot make its task's postprocess fail on shape.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.cards import (
    CardError,
    ClassifyCard,
    DetectCard,
    FaceDetectCard,
    ModelCard,
    SegmentCard,
    TensorSpec,
)

# golden.npz holds one batch-1 example; a file this large is not one.
MAX_GOLDEN_BYTES = 64 * 1024 * 1024
MAX_GOLDEN_UNPACKED = 256 * 1024 * 1024


def check_signature(card: ModelCard, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    """The card's declared tensors against the session's (`session.get_inputs()` / outputs:
    objects with .name, .shape, .type)."""
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise CardError("model.onnx", f"has {len(inputs)} inputs {names}; the service feeds one")
    _same_tensor("inputs[0]", card.inputs[0], inputs[0])
    if inputs[0].type != "tensor(float)":
        raise CardError("model.onnx", f"input {inputs[0].name} is {inputs[0].type}; need float32")
    graph = {o.name: o for o in outputs}
    for i, spec in enumerate(card.outputs):
        if spec.name not in graph:
            raise CardError(
                f"outputs[{i}].name", f"{spec.name!r} is not an output of the graph ({list(graph)})"
            )
        _same_tensor(f"outputs[{i}]", spec, graph[spec.name])
    if [o.name for o in outputs][: len(card.outputs)] != [s.name for s in card.outputs]:
        raise CardError(
            "outputs",
            f"order {[s.name for s in card.outputs]} differs from the graph's "
            f"{[o.name for o in outputs]}",
        )


def _same_tensor(field: str, spec: TensorSpec, meta: Any) -> None:
    if spec.name != meta.name:
        raise CardError(f"{field}.name", f"{spec.name!r} but the graph calls it {meta.name!r}")
    shape = list(meta.shape or [])
    if len(spec.shape) != len(shape):
        raise CardError(
            f"{field}.shape",
            f"{spec.shape} has rank {len(spec.shape)}; the graph's "
            f"{meta.name} is {shape} (rank {len(shape)})",
        )
    for axis, (want, have) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int) and isinstance(have, int) and want != have:
            raise CardError(f"{field}.shape", f"axis {axis} is {want}; the graph says {have}")


def check_outputs(card: ModelCard, outputs: Mapping[str, np.ndarray], batch: int) -> None:
    """Warm-up outputs (name -> array) for `batch` inputs: finite, and shaped as the task's
    postprocess reads them."""
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CardError("model.onnx", f"output {name} is not finite on the warm-up input")
        if value.ndim == 0 or value.shape[0] != batch:
            raise CardError(
                "model.onnx", f"output {name} has shape {value.shape}; batch axis {batch} first"
            )
    first = outputs[card.outputs[0].name]
    n_labels = len(card.labels)
    if isinstance(card, ClassifyCard):
        if first.ndim != 2:
            raise CardError("outputs[0].shape", f"classify needs (N, K) logits, got {first.shape}")
        if first.shape[1] != n_labels:
            raise CardError("labels", f"{n_labels} labels for {first.shape[1]} output classes")
    elif isinstance(card, DetectCard):
        if first.ndim != 3:
            raise CardError("outputs[0].shape", f"detect needs a rank-3 output, got {first.shape}")
        layout = card.postprocess.layout
        classes = first.shape[2] - 5 if layout == "yolov5" else first.shape[1] - 4
        if classes != n_labels:
            raise CardError(
                "labels",
                f"{n_labels} labels but the {layout} output {first.shape} has {classes} classes",
            )
    elif isinstance(card, SegmentCard):
        boxes, labels, scores, probs = (outputs[s.name] for s in card.outputs)
        if boxes.ndim != 3 or boxes.shape[2] != 4 or labels.ndim != 2 or scores.ndim != 2:
            raise CardError(
                "outputs",
                "segment needs boxes (1, N, 4), labels (1, N), scores "
                f"(1, N); got {boxes.shape}, {labels.shape}, {scores.shape}",
            )
        if probs.ndim != 4:
            raise CardError("outputs[3].shape", f"mask_probs must be (1, N, M, M): {probs.shape}")
    elif isinstance(card, FaceDetectCard):
        want = {f"{k}_{s}" for s in card.postprocess.strides for k in ("cls", "obj", "bbox", "kps")}
        missing = sorted(want - set(outputs))
        if missing:
            raise CardError("postprocess.strides", f"the graph has no outputs {missing}")
    else:  # face-embed
        if first.ndim != 2:
            raise CardError("outputs[0].shape", f"an embedding is (N, D); got {first.shape}")


def load_golden(path: Path, card: ModelCard) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """golden.npz -> (input, {output name: expected}). Never unpickles."""
    if path.is_symlink() or not path.is_file():
        raise CardError("golden", f"the card names {path.name}, which is missing")
    if path.stat().st_size > MAX_GOLDEN_BYTES:
        raise CardError("golden", f"{path.name} is over {MAX_GOLDEN_BYTES} bytes")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy: np.load hands back the bare array
            raise ValueError("it holds one array (a .npy file), not the named arrays of an .npz")
        with loaded as data:
            # the members' unpacked sizes, from the zip directory, before anything is inflated:
            # a few-kB file could otherwise expand into gigabytes
            unpacked = sum(info.file_size for info in data.zip.infolist())
            if unpacked > MAX_GOLDEN_UNPACKED:
                raise ValueError(
                    f"its arrays unpack to {unpacked} bytes (limit {MAX_GOLDEN_UNPACKED})"
                )
            arrays = {k: data[k] for k in data.files}
    except (
        OSError,
        ValueError,
        zipfile.BadZipFile,
        EOFError,
        zlib.error,  # a damaged compressed member
        NotImplementedError,  # a compression method zipfile cannot read
    ) as exc:
        raise CardError("golden", f"{path.name} is not a readable .npz: {exc}") from None
    if "input" not in arrays:
        raise CardError("golden", f"{path.name} has no 'input' array")
    expected = {}
    for spec in card.outputs:
        key = f"output:{spec.name}"
        if key not in arrays:
            raise CardError("golden", f"{path.name} has no {key!r} array")
        expected[spec.name] = arrays[key]
    x = arrays["input"]
    if x.dtype != np.float32 or x.ndim < 1 or x.shape[0] != 1:
        raise CardError("golden", f"input must be float32 with batch 1, got {x.dtype} {x.shape}")
    return x, expected


def compare_golden(
    card: ModelCard, got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> None:
    assert card.golden is not None
    rtol, atol = card.golden.rtol, card.golden.atol
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape:
            raise CardError(
                "golden", f"output {name} is {have.shape}; the exporter saw {want.shape}"
            )
        if not np.allclose(have, want, rtol=rtol, atol=atol):
            worst = float(np.max(np.abs(have.astype(np.float64) - want)))
            raise CardError(
                "golden",
                f"output {name} differs from the exporter's by up to {worst:.3g} "
                f"(rtol {rtol:g}, atol {atol:g}): not the model the card was written for",
            )
