"""KServe's Python model server (`kserve` from PyPI) serving the same ONNX model over the Open
Inference Protocol (v2 REST), with a model class as KServe's docs write one: `load()` creates
the session, a sync `predict()` decodes, preprocesses, runs and postprocesses inline.

    BENCH_MODEL_DIR=models/mobilenet_v2-imagenet BENCH_PORT=8002 \
        python -m scripts.bench.apps.kserve_app

Input: a BYTES tensor "image" of base64-encoded images, shape [N], sent by tritonclient.http
with its binary extension. Raw JPEG bytes cannot reach a KServe 0.21 model over REST: its
`InferRequest.from_bytes` turns every binary BYTES input back into JSON strings with
`set_data_from_numpy(..., binary_data=False)`, which answers 500 "Failed to encode ... using
UTF-8" for anything that is not UTF-8 text; base64 is what KServe's own image examples send.
Outputs, as this service's OIP image style answers a classifier: labels BYTES [N, 5], scores
FP32 [N, 5]. KServe calls a sync `predict` on its event loop, so requests are served one at a
time: that is the model server as documented, not a tuning choice here.
"""

from __future__ import annotations

import base64
import logging
import os
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from scripts.bench.apps.pipeline import Pipeline


class OnnxClassifier(Model):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.pipeline: Pipeline | None = None
        self.load()

    def load(self) -> bool:
        self.pipeline = Pipeline.from_env()
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        assert self.pipeline is not None
        pipe = self.pipeline
        encoded = payload.inputs[0].as_numpy().reshape(-1)
        images = [pipe.decode(base64.b64decode(data)) for data in encoded]
        tensor, geometries = pipe.prepare(images)
        answers: list[Any] = pipe.answer(pipe.run(tensor), geometries)
        labels = np.array(
            [[p["label"].encode() for p in a["predictions"]] for a in answers], dtype=object
        )
        scores = np.array([[p["score"] for p in a["predictions"]] for a in answers], np.float32)
        outputs = [
            InferOutput("labels", list(labels.shape), "BYTES"),
            InferOutput("scores", list(scores.shape), "FP32"),
        ]
        outputs[0].set_data_from_numpy(labels, binary_data=True)
        outputs[1].set_data_from_numpy(scores, binary_data=True)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=True,
        )


if __name__ == "__main__":
    name = os.environ.get("BENCH_MODEL_NAME", "model")
    server = ModelServer(
        http_port=int(os.environ["BENCH_PORT"]),
        enable_grpc=False,
        enable_latency_logging=False,
        workers=1,
    )
    # As quiet as every other stack in the benchmark: no access log line per request.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start([OnnxClassifier(name)])
