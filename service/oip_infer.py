"""One Open Inference Protocol inference on one model, in either of its two input styles, and
the model's metadata.

- The graph's own input (the card's input name, FP32, the card's shape; -1 axes take any size):
  answered with the graph's raw outputs, exactly what running the ONNX file gives. A batch
  larger than the model's max_batch runs as several batches of the same micro-batcher (at most
  MAX_CHUNKS of them), concatenated in order.
- "image" (BYTES encoded images): service.oip_images.

Both go through `runtime.infer`, so they share the model's batcher, queue limit (429) and
deadline with the REST endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime.capi.onnxruntime_pybind11_state as ort_state

from service.errors import InvalidRequest, PayloadTooLarge
from service.oip import (
    InferenceRequest,
    InputTensor,
    OutputTensor,
    check_requested,
    datatype_of,
    metadata_shape,
    select_outputs,
)
from service.oip_images import (
    IMAGE_INPUT,
    OUTPUTS,
    ImageRequest,
    describe,
    gather_all,
    images_of,
    run_images,
)
from service.runtime import ModelRuntime
from service.timing import Timing

PLATFORM = "onnxruntime_onnx"
MAX_CHUNKS = 8
# What onnxruntime raises when a graph cannot run on an input its signature allows (an odd
# image size on a symbolic axis): the client's input, so a 400, not a 500.
_ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException)


def _input_spec(runtime: ModelRuntime) -> tuple[str, list[int]]:
    spec = runtime.card.inputs[0]
    return spec.name, metadata_shape(spec.shape)


def _styles(runtime: ModelRuntime) -> str:
    name, shape = _input_spec(runtime)
    return (
        f"model {runtime.name} takes one input: {name!r} (FP32 {shape}, the graph's own tensor) "
        f"or {IMAGE_INPUT!r} (BYTES, encoded images)"
    )


def is_image_input(runtime: ModelRuntime, tensor: InputTensor) -> bool:
    """Which style a request's single input asks for (by name; by datatype if the graph's own
    input happens to be called "image" too)."""
    if tensor.name == IMAGE_INPUT and (
        tensor.datatype == "BYTES" or tensor.name != runtime.input_name
    ):
        return True
    if tensor.name == runtime.input_name:
        return False
    raise InvalidRequest(f"unknown input {tensor.name!r}; {_styles(runtime)}")


def raw_tensor(runtime: ModelRuntime, tensor: InputTensor) -> np.ndarray:
    """The graph's own input, checked against the card: FP32, rank, fixed axes, rows, finite."""
    name, shape = _input_spec(runtime)
    if tensor.datatype != "FP32":
        raise InvalidRequest(f"input {name!r} is FP32; got {tensor.datatype}")
    got = list(tensor.shape)
    if (
        len(got) != len(shape)
        or any(want not in (-1, have) for want, have in zip(shape, got, strict=True))
        or min(got, default=0) < 1
    ):
        raise InvalidRequest(
            f"input {name!r} has shape {got}; model {runtime.name} takes {shape} "
            "(-1: any size of at least 1)"
        )
    limit = runtime.max_batch * MAX_CHUNKS
    if got[0] > limit:
        raise PayloadTooLarge(
            f"{got[0]} rows in one request; model {runtime.name} takes at most {limit} "
            f"({MAX_CHUNKS} batches of {runtime.max_batch})"
        )
    if not np.isfinite(tensor.data).all():
        raise InvalidRequest(f"input {name!r} holds NaN or infinite values")
    return tensor.data


async def run_raw(
    runtime: ModelRuntime, tensor: np.ndarray, timing: Timing
) -> dict[str, OutputTensor]:
    """(rows, ...) FP32 -> every graph output, rows in order."""
    step = runtime.max_batch
    chunks = [tensor[i : i + step] for i in range(0, tensor.shape[0], step)]
    try:
        results = await gather_all([runtime.infer(chunk, timing) for chunk in chunks])
    except _ORT_ERRORS as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise InvalidRequest(
            f"model {runtime.name} cannot run on an input of shape {list(tensor.shape)}: {reason}"
        ) from None
    outputs = [
        parts[0] if len(parts) == 1 else np.concatenate(parts)
        for parts in zip(*(r.outputs for r in results), strict=True)
    ]
    return {
        name: OutputTensor(name, datatype_of(out.dtype), out)
        for name, out in zip(runtime.output_names, outputs, strict=True)
    }


async def infer(
    runtime: ModelRuntime, request: InferenceRequest, ctx: ImageRequest
) -> list[tuple[OutputTensor, bool | None]]:
    """Run one request in the style its input asks for -> the outputs to answer with."""
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InvalidRequest(f"got {len(names)} inputs {names}; {_styles(runtime)}")
    (tensor,) = request.inputs
    image_style = is_image_input(runtime, tensor)
    names = [n for n, _, _ in OUTPUTS[runtime.card.task]] if image_style else runtime.output_names
    check_requested(names, request.outputs)  # before any work is done
    if image_style:
        outputs = await run_images(runtime, images_of(tensor), ctx)
    else:
        outputs = await run_raw(runtime, raw_tensor(runtime, tensor), ctx.timing)
    return select_outputs(outputs, request.outputs)


def _tensor_meta(spec: Any) -> dict[str, Any]:
    try:
        datatype = datatype_of(spec.dtype)
    except (TypeError, ValueError):
        datatype = str(spec.dtype).upper()
    return {"name": spec.name, "datatype": datatype, "shape": metadata_shape(spec.shape)}


def model_metadata(runtime: ModelRuntime, versions: Sequence[int]) -> dict[str, Any]:
    """The protocol's model metadata, from the card; the encoded-image style is described in
    `parameters` (scalars, as the protocol's parameters are) and in full under `image_input`."""
    card = runtime.card
    return {
        "name": card.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [_tensor_meta(s) for s in card.inputs],
        "outputs": [_tensor_meta(s) for s in card.outputs],
        "parameters": {
            "task": card.task,
            "version": runtime.version,
            "max_batch_size": runtime.max_batch,
            "image_input": IMAGE_INPUT,
            "image_outputs": ",".join(n for n, _, _ in OUTPUTS[card.task]),
        },
        "image_input": describe(card.task, card.outputs),
    }
