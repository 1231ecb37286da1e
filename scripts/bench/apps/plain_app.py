"""The plain FastAPI + onnxruntime server most teams first write: one session, no batching,
decode and preprocessing inline in the handler (a sync `def`, so FastAPI runs it in its thread
pool and concurrent requests call session.run at the same time).

    BENCH_MODEL_DIR=models/mobilenet_v2-imagenet BENCH_THREADS=2 BENCH_ORT_SPINNING=0 \
        uvicorn scripts.bench.apps.plain_app:app

scripts/bench/serving.py runs it twice: `plain` with ORT's intra-op thread spinning off (as the
service runs), `plain-spin` with ORT's default (spinning on).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, File, UploadFile

from scripts.bench.apps.pipeline import Pipeline

pipeline = Pipeline.from_env()
app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
def predict(image: UploadFile = File(...)) -> Any:
    return pipeline.one(image.file.read())
