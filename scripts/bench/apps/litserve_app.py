"""LitServe serving the same ONNX model with its dynamic batching on.

    BENCH_MODEL_DIR=models/mobilenet_v2-imagenet BENCH_PORT=8001 BENCH_MAX_BATCH=8 \
        BENCH_BATCH_TIMEOUT=0.002 python -m scripts.bench.apps.litserve_app

The photo arrives base64-encoded in JSON ({"image": "<base64 JPEG>"}), as in LitServe's own
image examples: a multipart upload cannot reach its inference worker process (LitServe pickles
the parsed form, and Starlette's UploadFile does not pickle). decode_request (in the worker)
decodes and preprocesses one photo, batch() stacks the tensors, predict() runs the session once
per batch, unbatch() splits the answers.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import litserve as ls
import numpy as np

from scripts.bench.apps.pipeline import Pipeline


class OnnxAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.pipeline = Pipeline.from_env()

    def decode_request(self, request: dict[str, str]) -> Any:
        data = base64.b64decode(request["image"])
        return self.pipeline.prepare([self.pipeline.decode(data)])

    def batch(self, inputs: list[Any]) -> Any:
        tensors = np.concatenate([t for t, _ in inputs], axis=0)
        return tensors, [g for _, gs in inputs for g in gs]

    def predict(self, x: Any) -> Any:
        tensor, geometries = x
        return self.pipeline.answer(self.pipeline.run(tensor), geometries)

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, list):  # unbatched: a lone request returns a list of one
            return output[0]
        return output


if __name__ == "__main__":
    api = OnnxAPI(
        max_batch_size=int(os.environ.get("BENCH_MAX_BATCH", "8")),
        batch_timeout=float(os.environ.get("BENCH_BATCH_TIMEOUT", "0.002")),
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=120)
    server.run(
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )
