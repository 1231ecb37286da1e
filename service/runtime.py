"""ONNX Runtime sessions: explicit providers, honest reporting of which one is active,
warm-up before ready, one micro-batcher per model."""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.batching import BatchResult, FinishFn, MicroBatcher, RunFn
from service.cards import CardError, LoadedCard, ModelCard
from service.checks import check_outputs, check_signature, compare_golden, load_golden
from service.errors import ModelUnavailable
from service.settings import Settings
from service.timing import Timing

log = logging.getLogger("service.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)

RunStrategy = Literal["iobinding", "run"]
_QUOTED_ABSOLUTE_PATH = re.compile(r'"/[^"]*"')


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


def on_gpu(active_providers: Sequence[str]) -> bool:
    return bool(active_providers) and active_providers[0] in GPU_PROVIDERS


def trt_profile(card: ModelCard, max_batch: int) -> dict[str, str]:
    """TensorRT optimisation profile covering batch 1..max_batch at the card's fixed image size,
    so one engine serves every batch the batcher forms (without one, TensorRT builds an engine
    per new shape, mid-request). Empty when there is nothing to profile: a fixed batch axis, or
    an image size that varies per request (Mask R-CNN), which TensorRT must handle by itself.

    -> {"trt_profile_min_shapes": "input:1x3x224x224", "..._opt_shapes": ..., "..._max_shapes":}
    """
    if len(card.inputs) != 1:  # the service feeds one input only
        return {}
    spec = card.inputs[0]
    if not spec.shape or isinstance(spec.shape[0], int):
        return {}
    dims = list(spec.shape[1:])
    size = card.preprocess.size
    if size is not None and card.preprocess.resize != "none-in-graph" and len(dims) == 3:
        # Exported with symbolic H/W but always fed at the card's size.
        h_axis = 1 if card.preprocess.layout == "NCHW" else 0
        dims[h_axis], dims[h_axis + 1] = size
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return {}
    rest = "x".join(str(d) for d in dims)

    def shape(batch: int) -> str:
        return f"{spec.name}:{batch}x{rest}"

    # opt = max_batch: under load the batcher fills batches, and that is when speed counts.
    return {
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(max_batch),
        "trt_profile_max_shapes": shape(max_batch),
    }


def provider_options(
    provider: str, settings: Settings, cache_dir: Path, profile: dict[str, str] | None = None
) -> dict[str, Any]:
    """Options for one execution provider. `profile` comes from `trt_profile`."""
    if provider == TENSORRT:
        # ORT's docs ask for the engine cache to be cleared when the precision or the profiles
        # change; a folder per combination does that without deleting anything.
        folder = "fp16" if settings.trt_fp16 else "fp32"
        if profile:
            folder += f"-b{settings.max_batch}"
        return {
            "device_id": settings.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir / folder),
            "trt_fp16_enable": settings.trt_fp16,
            **(profile or {}),
        }
    if provider == CUDA:
        return {
            "device_id": settings.device_id,
            "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
        }
    return {}


def run_strategy(active_providers: Sequence[str], settings: Settings) -> RunStrategy:
    """How the batcher calls the session. On a GPU, IO binding copies the input to the device
    once and leaves the outputs in device memory until one copy back, instead of letting `run`
    stage both through host buffers per call; on the CPU there is no copy to save."""
    if settings.io_binding == "off":
        return "run"
    if settings.io_binding == "on" or on_gpu(active_providers):
        return "iobinding"
    return "run"


def warmup_batch_sizes(active_providers: Sequence[str], max_batch: int) -> list[int]:
    """Batch sizes to warm up. cuDNN and TensorRT pick kernels per input shape, so on a GPU the
    powers of two below max_batch are run as well; on the CPU the smallest and largest batch
    are enough to size ORT's memory arena."""
    sizes = {1, max_batch}
    if on_gpu(active_providers):
        batch = 2
        while batch < max_batch:
            sizes.add(batch)
            batch *= 2
    return sorted(sizes)


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
    runner: RunFn
    io_binding: bool = False
    trt_fp16: bool = False
    timeout_s: float | None = None
    load_ms: float = 0.0
    warmup_ms: float = 0.0
    check_ms: float = 0.0
    ready: bool = False
    version: int = 1
    folder: Path | None = None
    # Requests holding this runtime (taken by ModelRegistry.get, given back when the response
    # is sent): a replaced version closes only once the last one is done.
    leases: int = 0
    _idle: asyncio.Event | None = None

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def ref(self) -> str:
        return f"{self.card.name}@{self.version}"

    def acquire(self) -> None:
        self.leases += 1
        if self._idle is not None:
            self._idle.clear()

    def release(self) -> None:
        self.leases -= 1
        if self.leases <= 0 and self._idle is not None:
            self._idle.set()

    async def retire(self, grace_s: float) -> None:
        """Stop serving: wait (up to grace_s) for the requests holding it, drain its queue,
        then close the batcher and drop the session so its memory goes back. The registry no
        longer hands it out; the requests that already hold it still run on it."""
        if self.leases > 0:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning(
                    "model %s: %d requests still running after %.0f s; closing",
                    self.ref,
                    self.leases,
                    grace_s,
                )
        self.ready = False
        await self.batcher.close(drain_timeout=grace_s)
        self.session = None
        self.runner = _closed_runner

    @property
    def fell_back(self) -> bool:
        return self.requested_providers[0] != self.active_providers[0]

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Synchronous run on a (N, ...) batch: what the batcher's thread runs; warm-up too."""
        return list(self.runner(tensor))

    async def infer(
        self,
        tensor: np.ndarray,
        timing: Timing,
        step: str = "inference",
        finish: FinishFn | None = None,
    ) -> BatchResult:
        """Queue (n, ...) rows for the next batch and wait for their outputs; the wait goes
        into `timing` as "queue", the run as `step`. `finish` (light: a top-k) makes the
        result's `answer` from the outputs in the batcher's thread (see MicroBatcher.submit)."""
        if not self.ready:
            raise ModelUnavailable(
                f"model {self.name} is still loading", headers={"Retry-After": "2"}
            )
        result = await self.batcher.submit(tensor, self.timeout_s, finish)
        timing.add("queue", result.queue_ms)
        timing.add(step, result.run_ms)
        return result

    def run_now(self, tensor: np.ndarray) -> BatchResult | None:
        """From a worker thread: run (n, ...) rows at once when the model is idle (see
        MicroBatcher.try_run); None when it is busy, loading or closing: then `infer` queues
        them (or says why not)."""
        return self.batcher.try_run(tensor) if self.ready else None

    def describe(self) -> dict[str, Any]:
        providers: dict[str, Any] = {
            "requested": self.requested_providers,
            "active": self.active_providers,
            "fell_back_to_cpu": self.fell_back,
            "io_binding": self.io_binding,
        }
        if TENSORRT in self.active_providers:
            providers["trt_fp16"] = self.trt_fp16
        return {
            "card": self.card.model_dump(mode="json"),
            "version": self.version,
            "ready": self.ready,
            "providers": providers,
            "batching": {
                "max_batch": self.max_batch,
                "max_wait_ms": self.batcher.max_wait * 1000,
                "max_queue": self.batcher.max_queue,
                "concurrency": self.batcher.concurrency,
                "queue_depth": self.batcher.depth,
                "batches_run": self.batcher.batches_run,
            },
            "load_ms": round(self.load_ms, 1),
            "warmup_ms": round(self.warmup_ms, 1),
            "check_ms": round(self.check_ms, 1),
        }


def _closed_runner(tensor: np.ndarray) -> list[np.ndarray]:
    raise ModelUnavailable("model was unloaded", headers={"Retry-After": "1"})


# The runtimes one HTTP request holds; set per request by LeaseMiddleware.
request_leases: contextvars.ContextVar[list[ModelRuntime] | None] = contextvars.ContextVar(
    "request_leases", default=None
)


def _run_session(
    session: Any, input_name: str, output_names: list[str], tensor: np.ndarray
) -> list[np.ndarray]:
    return list(session.run(output_names, {input_name: tensor}))


def run_with_io_binding(
    session: Any,
    input_name: str,
    output_names: list[str],
    device: str,
    device_id: int,
    tensor: np.ndarray,
) -> list[np.ndarray]:
    """tensor: (N, ...) on the host -> outputs (N, ...) on the host, with the input copied to
    `device` ("cuda" or "cpu") once and the outputs left where the provider produced them
    until the single copy back."""
    binding = session.io_binding()
    value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(tensor), device, device_id)
    binding.bind_ortvalue_input(input_name, value)
    for name in output_names:
        binding.bind_output(name, device, device_id)
    session.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())


def make_runner(
    session: Any,
    input_name: str,
    output_names: list[str],
    strategy: RunStrategy,
    active_providers: Sequence[str],
    device_id: int,
) -> RunFn:
    """The batcher's run function for `strategy`; IO binding binds to the GPU when one is
    active, else to host memory (same code path, useful to test on a CPU machine)."""
    if strategy == "run":
        return partial(_run_session, session, input_name, output_names)
    device, index = ("cuda", device_id) if on_gpu(active_providers) else ("cpu", 0)
    return partial(run_with_io_binding, session, input_name, output_names, device, index)


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


def load_model(loaded: LoadedCard, settings: Settings, version: int | None = None) -> ModelRuntime:
    """Create the session with explicit providers and check which ones actually started; the
    card must agree with the graph (CardError otherwise, as for anything onnxruntime refuses)."""
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
    # Spinning intra-op threads keep a core busy between runs: the event loop and the decode
    # threads then wait for CPU, which costs more than the wake-up it saves (see the docs,
    # performance/index.md).
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.ort_spinning else "0"
    )
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # provider fall-back is reported once, below, by us
    # ORT's CPU arena keeps the largest block each input shape ever needed; a model whose
    # image size varies per request (Mask R-CNN) would grow it without bound.
    options.enable_cpu_mem_arena = not _has_dynamic_image_size(card)
    cache_dir = loaded.onnx_path.parent / ".trt-cache"
    profile = trt_profile(card, settings.max_batch)
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(
            str(loaded.onnx_path),
            sess_options=options,
            providers=[(p, provider_options(p, settings, cache_dir, profile)) for p in requested],
        )
    except Exception as exc:  # onnxruntime raises its own types for every kind of bad file
        reason = str(exc).replace(str(loaded.onnx_path.parent), "<model folder>")
        # the reason reaches clients (409 model_failed): no other server path either
        reason = _QUOTED_ABSOLUTE_PATH.sub('"<path>"', reason)
        raise CardError("model.onnx", f"onnxruntime cannot load it: {reason[:500]}") from None
    check_signature(card, session.get_inputs(), session.get_outputs())
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
    strategy = run_strategy(active, settings)
    runner = make_runner(session, input_name, output_names, strategy, active, settings.device_id)
    batcher = MicroBatcher(
        runner,
        name=card.name,
        max_batch=max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        concurrency=settings.batch_concurrency,
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
        runner=runner,
        io_binding=strategy == "iobinding",
        trt_fp16=settings.trt_fp16,
        timeout_s=settings.request_timeout_s,
        load_ms=(time.perf_counter() - started) * 1000,
        version=version if version is not None else card.version,
        folder=loaded.onnx_path.parent,
    )


def _named(runtime: ModelRuntime, outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(runtime.output_names, outputs, strict=True))


def _run_checked(runtime: ModelRuntime, tensor: np.ndarray) -> list[np.ndarray]:
    try:
        return runtime.run(tensor)
    except Exception as exc:  # the graph fails on an input of its own declared shape
        raise CardError(
            "model.onnx", f"fails on a {list(tensor.shape)} input: {str(exc)[:300]}"
        ) from None


def warm_up(runtime: ModelRuntime, runs: int) -> None:
    """Run the batch sizes the batcher will use so the first client pays no allocation cost,
    checking what comes out (finite, the shapes the task reads): CardError otherwise."""
    started = time.perf_counter()
    sizes = warmup_batch_sizes(runtime.active_providers, runtime.max_batch)
    for i in range(max(runs, 1)):
        for batch in sizes:
            outputs = _run_checked(runtime, _dummy_input(runtime.card, runtime.session, batch))
            if i == 0:
                check_outputs(runtime.card, _named(runtime, outputs), batch)
    runtime.warmup_ms = (time.perf_counter() - started) * 1000


def check_golden(runtime: ModelRuntime) -> None:
    """Replay the card's golden example, if it has one: CardError when the answer differs."""
    card = runtime.card
    if card.golden is None or runtime.folder is None:
        return
    started = time.perf_counter()
    x, expected = load_golden(runtime.folder / card.golden.file, card)
    meta = runtime.session.get_inputs()[0]
    fixed = [d for d in meta.shape[1:]]
    if len(fixed) != x.ndim - 1 or any(
        isinstance(d, int) and d != n for d, n in zip(fixed, x.shape[1:], strict=True)
    ):
        raise CardError("golden", f"input {list(x.shape)} does not fit the graph's {meta.shape}")
    got = _named(runtime, _run_checked(runtime, x))
    compare_golden(card, got, expected)
    runtime.check_ms = (time.perf_counter() - started) * 1000
