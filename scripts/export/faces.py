"""Face models -> ONNX + model card: the YuNet detector and SFace embedder as shipped in a
registry wheel (repaired so onnxruntime runs them), any detector/embedder ONNX of the same
shape, and the embedding tower that scripts/train/similarity/cli.py trains.

The shipped YuNet/SFace files are opset-21 block-quantized graphs that onnxruntime refuses
(per-tensor DequantizeLinear nodes carry a `block_size`; SFace keeps stale graph inputs). They
are repaired by folding every DequantizeLinear into a float32 initializer, which is also faster
on CPU than dequantizing on each run (see MODELS.md section 3).
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchvision
from onnx import helper, numpy_helper
from torch import nn

from scripts.export.common import check_parity, export_info, to_onnx_bytes, write_model_dir
from service.cards import Preprocess

ARCFACE_TEMPLATE = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
]
YUNET_STRIDES = (8, 16, 32)
YUNET_PREPROCESS: dict[str, Any] = {
    "resize": "letterbox",
    "size": [640, 640],
    "interpolation": "bilinear",
    "scale": 1.0,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "channel_order": "BGR",
    "layout": "NCHW",
    "pad_value": 0,
    "pad_anchor": "top-left",  # YuNet's own preprocessing; centred padding moves landmarks
}
SFACE_PREPROCESS: dict[str, Any] = {
    "resize": "stretch",  # the input is already an aligned crop of exactly this size
    "size": [112, 112],
    "interpolation": "bilinear",
    "scale": 1.0,  # (x - 127.5) / 128 happens inside the graph
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "channel_order": "RGB",
    "layout": "NCHW",
}
SFACE_THRESHOLDS = {"cosine": 0.363, "euclidean": 1.128}
SFACE_THRESHOLD_SOURCE = (
    "OpenCV's published figures for SFace (opencv_zoo face_recognition_sface, FaceRecognizerSF "
    "sample): same person if cosine >= 0.363 or NORM_L2 <= 1.128"
)


# --- repairing the shipped graphs ---------------------------------------------------------


def _dequantize(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, block: int
) -> np.ndarray:
    """What DequantizeLinear computes: (q - zero) * scale, per tensor, per axis or per block."""
    q, scale, zero = (np.asarray(a, dtype=np.float32) for a in (q, scale, zero))
    if scale.size == 1:  # per tensor (the shipped YuNet biases also, wrongly, name a block)
        return (q - zero.reshape(())) * scale.reshape(())
    axis = axis % q.ndim
    if block:
        idx = np.arange(q.shape[axis]) // block
        scale, zero = np.take(scale, idx, axis=axis), np.take(zero, idx, axis=axis)
        return (q - zero) * scale
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q - zero.reshape(shape)) * scale.reshape(shape)


def fold_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with stale graph inputs dropped, every DequantizeLinear of constant
    inputs replaced by its float32 result, constant weight Reshapes folded, and unused
    initializers removed."""
    m = copy.deepcopy(model)
    g = m.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    used = {x for n in g.node for x in n.input}
    inputs = [i for i in g.input if i.name not in consts and i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    nodes = []
    for node in g.node:
        if all(x in consts for x in node.input if x):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "DequantizeLinear":
                q, s, *z = (consts[x] for x in node.input)
                zero = z[0] if z else np.zeros_like(s)
                consts[node.output[0]] = _dequantize(
                    q, s, zero, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
                )
                continue
            shape = consts[node.input[1]] if node.op_type == "Reshape" else None
            if shape is not None and np.all(shape != 0):  # 0 means "copy": leave those be
                consts[node.output[0]] = consts[node.input[0]].reshape(shape)
                continue
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    onnx.checker.check_model(m)
    return m


def minimal_repair(model: onnx.ModelProto) -> onnx.ModelProto:
    """The smallest change that lets onnxruntime run the quantized graph as shipped (drop stale
    inputs, strip `block_size` from per-tensor nodes): the reference `fold_quantization` is
    checked against, so the fold is compared with onnxruntime's own DequantizeLinear."""
    m = copy.deepcopy(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    used = {x for n in g.node for x in n.input}
    inputs = [i for i in g.input if i.name not in inits and i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    for node in g.node:
        if node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            continue
        if numpy_helper.to_array(inits[node.input[1]]).size == 1:
            keep = [a for a in node.attribute if a.name != "block_size"]
            del node.attribute[:]
            node.attribute.extend(keep)
            for i in (1, 2)[: len(node.input) - 1]:  # per-tensor wants a scalar scale/zero
                scalar = numpy_helper.to_array(inits[node.input[i]]).reshape(())
                g.initializer.append(numpy_helper.from_array(scalar, f"{node.name}_{i}_scalar"))
                node.input[i] = f"{node.name}_{i}_scalar"
    return m


def make_batch_dynamic(model: onnx.ModelProto, dim: str = "batch") -> onnx.ModelProto:
    """A copy whose first input and output axis is symbolic. Intermediate shapes recorded for
    batch 1 are dropped (onnxruntime infers them again); graphs that reshape to a literal
    batch of 1 would still fail, which `batch_consistency` catches."""
    m = copy.deepcopy(model)
    for value in [*m.graph.input, *m.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_param = dim
    del m.graph.value_info[:]
    onnx.checker.check_model(m)
    return m


def _session(model: onnx.ModelProto | bytes) -> Any:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the "unused initializer" notes of the shipped files
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _sample(shape: list[int], batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=[batch, *shape[1:]]).astype(np.float32)


def max_diff(a: onnx.ModelProto, b: onnx.ModelProto, shape: list[int]) -> float:
    """Largest |output difference| of two graphs on one random 0..255 input."""
    sa, sb = _session(a), _session(b)
    x = _sample(shape, 1)
    ya = sa.run(None, {sa.get_inputs()[0].name: x})
    yb = sb.run(None, {sb.get_inputs()[0].name: x})
    return max(float(np.max(np.abs(p - q))) for p, q in zip(ya, yb, strict=True))


def batch_consistency(model: onnx.ModelProto | bytes, shape: list[int], batch: int = 2) -> float:
    """Largest |row of a batched run - the same row run alone|: 0-ish when batching is safe."""
    sess = _session(model)
    name = sess.get_inputs()[0].name
    x = _sample(shape, batch, seed=1)
    together = sess.run(None, {name: x})
    worst = 0.0
    for i in range(batch):
        alone = sess.run(None, {name: x[i : i + 1]})
        for t, a in zip(together, alone, strict=True):
            worst = max(worst, float(np.max(np.abs(t[i : i + 1] - a))))
    return worst


# --- cards ------------------------------------------------------------------------------


def _spec(value: onnx.ValueInfoProto, description: str) -> dict[str, Any]:
    dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    return {"name": value.name, "shape": dims, "dtype": "float32", "description": description}


def _onnx_export_info(model: onnx.ModelProto, **extra: Any) -> dict[str, Any]:
    return {
        "tool": "python -m scripts export face",
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _validated(preprocess: dict[str, Any]) -> dict[str, Any]:
    """The card's preprocess with every default spelled out, checked as the service will."""
    return Preprocess.model_validate(preprocess).model_dump(mode="json")


def package_detector(
    model: onnx.ModelProto,
    *,
    name: str,
    out_dir: Path,
    source: dict[str, Any],
    export: dict[str, Any],
    preprocess: dict[str, Any] | None = None,
    score_threshold: float = 0.6,
) -> Path:
    """Check a YuNet-shaped detector (input [1|batch, 3, H, W]; outputs cls/obj/bbox/kps per
    stride) by running it once, then write it with its card."""
    pre = _validated(preprocess or YUNET_PREPROCESS)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    h, w = pre["size"]
    if len(dims) != 4 or dims[1:] != [3, h, w]:
        raise ValueError(f"detector input {inp.name} is {dims}; expected [N, 3, {h}, {w}]")
    sess = _session(model)
    names = [o.name for o in sess.get_outputs()]
    outputs = dict(zip(names, sess.run(None, {inp.name: _sample(dims, 1)}), strict=True))
    for s in YUNET_STRIDES:
        cells = (h // s) * (w // s)
        for key, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
            got = outputs.get(f"{key}_{s}")
            if got is None or got.shape != (1, cells, width):
                shape = None if got is None else got.shape
                raise ValueError(f"{key}_{s}: expected (1, {cells}, {width}), got {shape}")
    meaning = {
        "cls": "face class score per anchor point",
        "obj": "objectness per anchor point",
        "bbox": "cx, cy offsets and log w, h in units of the stride",
        "kps": "5 landmarks (x, y) offsets in units of the stride",
    }
    card = {
        "schema_version": 1,
        "name": name,
        "task": "face-detect",
        "version": "1",
        "labels": ["face"],
        "inputs": [_spec(inp, f"{pre['channel_order']} 0..255, long side fit to {w}, padded")],
        "outputs": [_spec(o, meaning[o.name.split("_")[0]]) for o in model.graph.output],
        "preprocess": pre,
        "postprocess": {
            "decoder": "yunet",
            "strides": list(YUNET_STRIDES),
            "score_threshold": score_threshold,
            "nms_iou_threshold": 0.3,
            "max_faces": 100,
            "landmarks": ["right_eye", "left_eye", "nose", "right_mouth", "left_mouth"],
        },
        "source": source,
        "export": export,
    }
    return write_model_dir(out_dir, name, model.SerializeToString(), card)


def embedder_postprocess(
    thresholds: dict[str, float], threshold_source: str, **extra: Any
) -> dict[str, Any]:
    return {
        "metric": "cosine",
        "thresholds": thresholds,
        "threshold_source": threshold_source,
        "alignment": "5-point similarity (Umeyama least squares) onto the template",
        "template": ARCFACE_TEMPLATE,
        "template_size": [112, 112],
        "normalize": "l2",
        **extra,
    }


def package_embedder(
    model: onnx.ModelProto,
    *,
    name: str,
    out_dir: Path,
    preprocess: dict[str, Any],
    postprocess: dict[str, Any],
    source: dict[str, Any],
    export: dict[str, Any],
) -> Path:
    """Check an embedder (input [batch, 3, h, w] as the card's size; output [batch, D]) by
    running it, then write it with its card."""
    preprocess = _validated(preprocess)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    h, w = preprocess["size"]
    if len(dims) != 4 or dims[1:] != [3, h, w]:
        raise ValueError(f"embedder input {inp.name} is {dims}; expected [N, 3, {h}, {w}]")
    sess = _session(model)
    (emb, *_) = sess.run(None, {inp.name: _sample(dims, 1)})
    if emb.ndim != 2 or emb.shape[0] != 1:
        raise ValueError(f"embedder output must be (N, D); got {emb.shape}")
    card = {
        "schema_version": 1,
        "name": name,
        "task": "face-embed",
        "version": "1",
        "labels": [],
        "inputs": [_spec(inp, f"aligned face crop, {preprocess['channel_order']}, NCHW")],
        "outputs": [
            _spec(model.graph.output[0], f"{emb.shape[1]}-d embedding; L2-normalise, then compare")
        ],
        "preprocess": preprocess,
        "postprocess": postprocess,
        "source": source,
        "export": export,
    }
    return write_model_dir(out_dir, name, model.SerializeToString(), card)


def import_detector(
    src: Path,
    out_dir: Path,
    name: str,
    source: dict[str, Any],
    preprocess: dict[str, Any] | None = None,
) -> Path:
    """A YuNet-shaped detector ONNX (as shipped: int8 block-quantized, fixed 1x3x640x640)
    -> float32 graph onnxruntime runs, checked against onnxruntime's own dequantization."""
    shipped = onnx.load(str(src))
    fixed = fold_quantization(shipped)
    dims = [d.dim_value or 1 for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    diff = max_diff(minimal_repair(shipped), fixed, dims)
    if diff > 1e-3:
        raise RuntimeError(f"folded {src.name} differs from onnxruntime's int8 by {diff:.3g}")
    export = _onnx_export_info(
        fixed,
        source_file=src.name,
        conversion="DequantizeLinear folded into float32 initializers (a no-op for float graphs)",
        parity_vs_int8_in_onnxruntime={"max_abs_diff": diff, "batch": 1},
    )
    print(f"{name}: float32 fold vs onnxruntime int8 max |diff| {diff:.2e}")
    return package_detector(
        fixed, name=name, out_dir=out_dir, source=source, export=export, preprocess=preprocess
    )


def import_embedder(
    src: Path,
    out_dir: Path,
    name: str,
    source: dict[str, Any],
    *,
    preprocess: dict[str, Any] | None = None,
    thresholds: dict[str, float] | None = None,
    threshold_source: str = SFACE_THRESHOLD_SOURCE,
) -> Path:
    """An embedding ONNX (defaults: SFace's preprocessing and published threshold) -> float32
    graph with a dynamic batch axis when batching leaves each row's output unchanged, so both
    faces of a verification run in one batch."""
    shipped = onnx.load(str(src))
    folded = fold_quantization(shipped)
    dims = [d.dim_value or 1 for d in folded.graph.input[0].type.tensor_type.shape.dim]
    diff = max_diff(minimal_repair(shipped), folded, dims)
    if diff > 1e-3:
        raise RuntimeError(f"folded {src.name} differs from onnxruntime's int8 by {diff:.3g}")
    fixed, batch_diff = folded, None
    try:
        candidate = make_batch_dynamic(folded)
        batch_diff = batch_consistency(candidate, dims, batch=4)
        if batch_diff <= 1e-3:
            fixed = candidate
    except Exception as exc:  # e.g. a Reshape to a literal batch of 1 inside the graph
        print(f"{name}: keeps its fixed batch axis ({type(exc).__name__}: {exc})")
    dynamic = fixed is not folded
    export = _onnx_export_info(
        fixed,
        source_file=src.name,
        conversion="DequantizeLinear folded into float32 initializers; stale graph inputs "
        "removed" + ("; batch axis made dynamic" if dynamic else ""),
        parity_vs_int8_in_onnxruntime={"max_abs_diff": diff, "batch": 1},
        batch_consistency={"max_abs_diff": batch_diff, "batch": 4, "dynamic": dynamic},
    )
    print(
        f"{name}: float32 fold vs onnxruntime int8 max |diff| {diff:.2e}; dynamic batch "
        f"{dynamic} (batch 4 vs 1: {batch_diff})"
    )
    post = embedder_postprocess(dict(thresholds or SFACE_THRESHOLDS), threshold_source)
    return package_embedder(
        fixed,
        name=name,
        out_dir=out_dir,
        preprocess=dict(preprocess or SFACE_PREPROCESS),
        postprocess=post,
        source=source,
        export=export,
    )


# --- the trained tower ------------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class EmbeddingTower(nn.Module):
    """The Siamese network's shared tower: image (N, 3, H, W) -> (N, dim) unit vectors.

    arch "small": four conv blocks of width w, 2w, 4w, 8w (stride 2 each); "mobilenet_v2":
    torchvision's MobileNetV2 features (load ImageNet weights for a good start).
    """

    def __init__(self, arch: str = "small", dim: int = 128, width: int = 32) -> None:
        super().__init__()
        if arch == "small":
            widths = [width, width * 2, width * 4, width * 8]
            self.features: nn.Module = nn.Sequential(
                *(_block(a, b) for a, b in zip([3, *widths[:-1]], widths, strict=True))
            )
            channels = widths[-1]
        elif arch == "mobilenet_v2":
            self.features = torchvision.models.mobilenet_v2().features
            channels = 1280
        else:
            raise ValueError(f"unknown tower {arch!r}: small | mobilenet_v2")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


def tower_from_checkpoint(ckpt: dict[str, Any]) -> EmbeddingTower:
    tower = EmbeddingTower(ckpt["arch"], int(ckpt["dim"]), int(ckpt.get("width", 32)))
    tower.load_state_dict(ckpt["state_dict"], strict=True)
    return tower.eval()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by scripts/train/similarity/cli.py."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "face-embedder":
        raise ValueError(f"{path}: not a face-embedder checkpoint from train-faces")
    return ckpt  # type: ignore[no-any-return]


def export_embedder(
    tower: nn.Module,
    *,
    name: str,
    out_dir: Path,
    preprocess: dict[str, Any],
    postprocess: dict[str, Any],
    source: dict[str, Any],
    tolerance: float = 1e-4,
) -> Path:
    """A trained tower -> ONNX (dynamic batch) with parity against torch, then its card."""
    h, w = preprocess["size"]
    gen = torch.Generator().manual_seed(0)
    data = to_onnx_bytes(
        tower,
        torch.randn(1, 3, h, w, generator=gen),
        input_name="input",
        output_names=["embedding"],
    )
    parity = check_parity(tower, data, torch.randn(2, 3, h, w, generator=gen), tolerance=tolerance)
    print(f"{name}: ONNX vs torch max |diff| {parity.max_abs_diff:.2e} on batch {parity.batch}")
    return package_embedder(
        onnx.load_from_string(data),
        name=name,
        out_dir=out_dir,
        preprocess=preprocess,
        postprocess=postprocess,
        source=source,
        export=export_info(parity),
    )
