"""ONNX Runtime sessions: explicit providers, honest reporting of which one is active,
warm-up before ready, one micro-batcher per model."""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.batching import BatchResult, MicroBatcher
from service.cards import LoadedCard, ModelCard
from service.errors import ModelNotFound, ModelUnavailable
from service.settings import Settings

log = logging.getLogger("service.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def _library_loads(*names: str) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def cuda_driver_present() -> bool:
    return _library_loads("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def tensorrt_present() -> bool:
    return _library_loads("libnvinfer.so.10", "libnvinfer.so", "nvinfer.dll")


def choose_providers(
    device: str,
    available: Sequence[str],
    *,
    has_cuda_driver: bool,
    has_tensorrt: bool,
) -> list[str]:
    """The providers to request, best first; CPU is always last so a session always starts.

    `available` comes from onnxruntime-gpu, which lists CUDA and TensorRT even on machines
    without a GPU (the list is fixed at build time), so `auto` also checks the driver.
    """
    wanted: list[str]
    if device == "cpu":
        wanted = []
    elif device == "cuda":
        wanted = [CUDA]
    elif device == "tensorrt":
        wanted = [TENSORRT, CUDA]
    else:  # auto
        wanted = []
        if has_cuda_driver:
            wanted = [TENSORRT, CUDA] if has_tensorrt else [CUDA]
    return [p for p in wanted if p in available] + [CPU]


def provider_options(provider: str, settings: Settings, cache_dir: Path) -> dict[str, Any]:
    if provider == TENSORRT:
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_fp16_enable": False,
        }
    if provider == CUDA:
        return {"cudnn_conv_algo_search": "HEURISTIC"}
    return {}


@dataclass
class ModelRuntime:
    """One loaded model: card, session, the providers really active, its batcher."""

    card: ModelCard
    session: Any  # ort.InferenceSession
    requested_providers: list[str]
    active_providers: list[str]
    input_name: str
    output_names: list[str]
    max_batch: int
    batcher: MicroBatcher
    timeout_s: float | None = None
    load_ms: float = 0.0
    warmup_ms: float = 0.0
    ready: bool = False

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def fell_back(self) -> bool:
        return self.requested_providers[0] != self.active_providers[0]

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Synchronous run on a (N, ...) batch; used by the batcher's thread and warm-up."""
        return _run_session(self.session, self.input_name, self.output_names, tensor)

    async def infer(self, tensor: np.ndarray) -> BatchResult:
        """Queue (n, ...) rows for the next batch and wait for their outputs."""
        if not self.ready:
            raise ModelUnavailable(
                f"model {self.name} is still loading", headers={"Retry-After": "2"}
            )
        return await self.batcher.submit(tensor, self.timeout_s)

    def describe(self) -> dict[str, Any]:
        return {
            "card": self.card.model_dump(mode="json"),
            "ready": self.ready,
            "providers": {
                "requested": self.requested_providers,
                "active": self.active_providers,
                "fell_back_to_cpu": self.fell_back,
            },
            "batching": {
                "max_batch": self.max_batch,
                "max_wait_ms": self.batcher.max_wait * 1000,
                "max_queue": self.batcher.max_queue,
                "queue_depth": self.batcher.depth,
                "batches_run": self.batcher.batches_run,
            },
            "load_ms": round(self.load_ms, 1),
            "warmup_ms": round(self.warmup_ms, 1),
        }


def _run_session(
    session: Any, input_name: str, output_names: list[str], tensor: np.ndarray
) -> list[np.ndarray]:
    return list(session.run(output_names, {input_name: tensor}))


def _dummy_input(card: ModelCard, session: Any, batch: int) -> np.ndarray:
    meta = session.get_inputs()[0]
    shape = [
        batch if i == 0 else (d if isinstance(d, int) and d > 0 else 64)
        for i, d in enumerate(meta.shape)
    ]
    if card.preprocess.size and len(shape) == 4:
        h, w = card.preprocess.size
        if card.preprocess.layout == "NCHW":
            shape[2], shape[3] = h, w
        else:
            shape[1], shape[2] = h, w
    return np.zeros(shape, dtype=np.float32)


def _has_dynamic_image_size(card: ModelCard) -> bool:
    """True when an input dimension other than the batch axis is symbolic."""
    for spec in card.inputs:
        if any(isinstance(d, str) for d in spec.shape[1:]):
            return True
    return False


def load_model(loaded: LoadedCard, settings: Settings) -> ModelRuntime:
    """Create the session with explicit providers and check which ones actually started."""
    card = loaded.card
    requested = choose_providers(
        settings.device,
        ort.get_available_providers(),
        has_cuda_driver=cuda_driver_present(),
        has_tensorrt=tensorrt_present(),
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # provider fall-back is reported once, below, by us
    # ORT's CPU arena keeps the largest block each input shape ever needed; a model whose
    # image size varies per request (Mask R-CNN) would grow it without bound.
    options.enable_cpu_mem_arena = not _has_dynamic_image_size(card)
    cache_dir = loaded.onnx_path.parent / ".trt-cache"
    started = time.perf_counter()
    session = ort.InferenceSession(
        str(loaded.onnx_path),
        sess_options=options,
        providers=[(p, provider_options(p, settings, cache_dir)) for p in requested],
    )
    active = list(session.get_providers())
    if requested[0] != CPU and active[0] != requested[0]:
        log.warning(
            "model %s: asked for %s but onnxruntime is running it on %s "
            "(missing CUDA/cuDNN/TensorRT libraries or no GPU); it will be slow",
            card.name,
            requested[0],
            active[0],
        )
    else:
        log.info("model %s: running on %s", card.name, active[0])

    first_dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else 1
    batchable = not isinstance(first_dim, int)  # fixed batch dims (e.g. 1) cannot stack
    max_batch = settings.max_batch if batchable else 1
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    batcher = MicroBatcher(
        partial(_run_session, session, input_name, output_names),
        name=card.name,
        max_batch=max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
    )
    return ModelRuntime(
        card=card,
        session=session,
        requested_providers=requested,
        active_providers=active,
        input_name=input_name,
        output_names=output_names,
        max_batch=max_batch,
        batcher=batcher,
        timeout_s=settings.request_timeout_s,
        load_ms=(time.perf_counter() - started) * 1000,
    )


def warm_up(runtime: ModelRuntime, runs: int) -> None:
    """Run the batch sizes the batcher will use so the first client pays no allocation cost."""
    started = time.perf_counter()
    sizes = sorted({1, runtime.max_batch})
    for _ in range(runs):
        for batch in sizes:
            runtime.run(_dummy_input(runtime.card, runtime.session, batch))
    runtime.warmup_ms = (time.perf_counter() - started) * 1000


@dataclass
class ModelRegistry:
    """All models the service loaded, and the default one per task."""

    models: dict[str, ModelRuntime] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    loading: bool = True

    def get(self, task: str, name: str | None) -> ModelRuntime:
        if name is None:
            name = self.defaults.get(task)
            if name is None:
                if self.loading:
                    raise ModelUnavailable("models are still loading", headers={"Retry-After": "2"})
                raise ModelNotFound(f"no {task} model is installed on this server")
        runtime = self.models.get(name)
        if runtime is None or runtime.card.task != task:
            choices = sorted(n for n, m in self.models.items() if m.card.task == task)
            if name in self.failed:
                raise ModelUnavailable(f"model {name} failed to load; see server logs")
            raise ModelNotFound(
                f"no {task} model named {name!r}; available: {', '.join(choices) or 'none'}"
            )
        return runtime

    @property
    def ready(self) -> bool:
        return (
            not self.loading
            and bool(self.defaults)
            and all(self.models[n].ready for n in self.defaults.values())
        )


def pick_defaults(cards: Sequence[ModelCard], preferred: Sequence[str]) -> dict[str, str]:
    """task -> model name: the preferred names first, else the first card per task by name."""
    defaults: dict[str, str] = {}
    by_name = {c.name: c for c in cards}
    for name in preferred:
        if name in by_name:
            defaults.setdefault(by_name[name].task, name)
    for card in sorted(cards, key=lambda c: c.name):
        defaults.setdefault(card.task, card.name)
    return defaults
