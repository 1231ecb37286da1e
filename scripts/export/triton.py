"""Write a Triton Inference Server model repository from this project's model cards.

    python -m scripts export-triton --models models --out triton-models
    docker run --gpus all -p 8000:8000 -v $PWD/triton-models:/models \\
        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models

For every models/<name>/ (model.onnx + model.json) it writes

    <out>/<name>/config.pbtxt      platform onnxruntime_onnx, inputs/outputs from the card,
                                   dynamic batching when the batch axis is dynamic
    <out>/<name>/1/model.onnx      the same ONNX file the service runs
    <out>/<name>/model.json        the card: preprocessing, labels, postprocessing
    <out>/<name>/labels.txt        classifiers only; Triton's classification extension uses it

Triton runs the graph only: decoding, resizing, normalising and the postprocessing the card
describes (softmax, NMS, mask pasting, face alignment) stay with the client, as they do in
this service's task modules. Models whose batch axis is fixed (YuNet, Mask R-CNN) get
max_batch_size 0 and no dynamic batching: Triton cannot stack their requests.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from scripts.fsutil import staged_dir
from service.cards import LoadedCard, TensorSpec, discover

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


def is_batched(card_input: TensorSpec) -> bool:
    """A named (symbolic) first axis is the dynamic batch axis; a number is fixed."""
    return bool(card_input.shape) and isinstance(card_input.shape[0], str)


def _dims(spec: TensorSpec, batched: bool) -> str:
    """Triton dims: the batch axis left out when batched; symbolic axes become -1."""
    axes = spec.shape[1:] if batched else spec.shape
    return ", ".join(str(a) if isinstance(a, int) else "-1" for a in axes)


def _tensor(spec: TensorSpec, batched: bool, extra: str = "") -> str:
    try:
        data_type = TRITON_TYPES[spec.dtype]
    except KeyError:
        raise ValueError(f"tensor {spec.name}: no Triton type for dtype {spec.dtype!r}") from None
    return (
        f'  {{\n    name: "{spec.name}"\n    data_type: {data_type}\n'
        f"    dims: [ {_dims(spec, batched)} ]\n{extra}  }}"
    )


def preferred_sizes(max_batch: int) -> list[int]:
    """Powers of two up to max_batch, and max_batch itself."""
    sizes = [s for s in (2, 4, 8, 16, 32, 64, 128) if s < max_batch]
    return [*sizes[-2:], max_batch]


def config_pbtxt(
    loaded: LoadedCard, *, max_batch: int, max_delay_us: int, kind: str, instances: int
) -> str:
    """The text-format ModelConfig for one card."""
    card = loaded.card
    batched = all(is_batched(i) for i in card.inputs)
    lines = [
        f"# {card.name}: {card.task} model exported from its card (model.json beside this file)",
        f'name: "{card.name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch if batched else 0}",
        "input [",
        ",\n".join(_tensor(t, batched) for t in card.inputs),
        "]",
        "output [",
    ]
    outputs = []
    for t in card.outputs:
        labelled = card.task == "classify" and card.labels and t is card.outputs[0]
        outputs.append(
            _tensor(t, batched, '    label_filename: "labels.txt"\n' if labelled else "")
        )
    lines += [",\n".join(outputs), "]"]
    if batched:
        sizes = ", ".join(str(s) for s in preferred_sizes(max_batch))
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: [ {sizes} ]",
            f"  max_queue_delay_microseconds: {max_delay_us}",
            "}",
        ]
    lines += [f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]", ""]
    return "\n".join(lines)


def export_model(loaded: LoadedCard, out: Path, **settings: int | str) -> Path:
    """Write one model folder under `out` (atomically: a temp folder, then a rename)."""
    card = loaded.card
    final = out / card.name
    with staged_dir(final) as tmp:
        (tmp / "1").mkdir()
        shutil.copy2(loaded.onnx_path, tmp / "1" / "model.onnx")
        shutil.copy2(loaded.onnx_path.parent / "model.json", tmp / "model.json")
        (tmp / "config.pbtxt").write_text(config_pbtxt(loaded, **settings))  # type: ignore[arg-type]
        if card.task == "classify" and card.labels:
            (tmp / "labels.txt").write_text("\n".join(card.labels) + "\n")
    return final


def export_repository(
    models_dir: Path,
    out: Path,
    *,
    only: list[str] | None = None,
    max_batch: int = 8,
    max_delay_us: int = 2000,
    kind: str = "KIND_GPU",
    instances: int = 1,
) -> list[Path]:
    cards = [c for c in discover(models_dir) if not only or c.card.name in only]
    if not cards:
        raise SystemExit(
            f"no model cards in {models_dir}: build them with scripts/recipes/build_models.py"
        )
    out.mkdir(parents=True, exist_ok=True)
    return [
        export_model(
            c, out, max_batch=max_batch, max_delay_us=max_delay_us, kind=kind, instances=instances
        )  # fmt: skip
        for c in cards
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="cards to export")
    parser.add_argument("--out", type=Path, default=Path("triton-models"))
    parser.add_argument("--only", nargs="+", metavar="NAME", help="just these models")
    parser.add_argument("--max-batch", type=int, default=8, help="max_batch_size when dynamic")
    parser.add_argument("--max-delay-us", type=int, default=2000,
                        help="dynamic batching: longest wait to fill a batch")  # fmt: skip
    parser.add_argument("--kind", choices=["KIND_GPU", "KIND_CPU"], default="KIND_GPU")
    parser.add_argument("--instances", type=int, default=1, help="model instances per device")
    args = parser.parse_args(argv)
    written = export_repository(
        args.models, args.out, only=args.only, max_batch=args.max_batch,
        max_delay_us=args.max_delay_us, kind=args.kind, instances=args.instances,
    )  # fmt: skip
    for folder in written:
        print(f"{folder.name}: {folder}/config.pbtxt")
    return 0
