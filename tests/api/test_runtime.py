"""Provider choice, the micro-batcher, and the service's independence from torch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from service.batching import MicroBatcher, stack_rows
from service.errors import Overloaded
from service.repository import pick_defaults
from service.runtime import CPU, CUDA, TENSORRT, choose_providers
from tests.support.app import ROOT
from tests.support.batching import RecordingModel

GPU_WHEEL = [TENSORRT, CUDA, CPU]  # onnxruntime-gpu lists these even without a GPU
CPU_WHEEL = ["AzureExecutionProvider", CPU]


@pytest.mark.parametrize(
    ("device", "available", "driver", "trt", "expected"),
    [
        ("auto", GPU_WHEEL, False, False, [CPU]),  # no driver: don't even ask for CUDA
        ("auto", GPU_WHEEL, True, False, [CUDA, CPU]),
        ("auto", GPU_WHEEL, True, True, [TENSORRT, CUDA, CPU]),
        ("auto", CPU_WHEEL, True, True, [CPU]),
        ("cpu", GPU_WHEEL, True, True, [CPU]),
        ("cuda", GPU_WHEEL, False, False, [CUDA, CPU]),  # asked explicitly: tried, reported
        ("tensorrt", GPU_WHEEL, True, False, [TENSORRT, CUDA, CPU]),
        ("cuda", CPU_WHEEL, True, False, [CPU]),
    ],
)
def test_choose_providers(device, available, driver, trt, expected):
    got = choose_providers(device, available, has_cuda_driver=driver, has_tensorrt=trt)
    assert got == expected


def test_pick_defaults_prefers_named_models_then_first_by_name():
    from types import SimpleNamespace as NS

    cards = [
        NS(name="b-cls", task="classify"),
        NS(name="a-cls", task="classify"),
        NS(name="yolo", task="detect"),
    ]
    assert pick_defaults(cards, []) == {"classify": "a-cls", "detect": "yolo"}  # type: ignore[arg-type]
    assert pick_defaults(cards, ["b-cls"])["classify"] == "b-cls"  # type: ignore[arg-type]


async def _run_concurrently(batcher: MicroBatcher, n: int) -> list[np.ndarray]:
    batcher.start()
    tensors = [np.full((1, 2, 2), i, np.float32) for i in range(n)]
    results = await asyncio.gather(*(batcher.submit(t) for t in tensors))
    await batcher.close()
    for i, r in enumerate(results):  # every request gets its own rows back
        np.testing.assert_array_equal(r.outputs[0], tensors[i] * 2)
        np.testing.assert_array_equal(r.outputs[1], [4.0 * i])
    return [np.asarray(r.batch_size) for r in results]


def test_concurrent_requests_are_batched_and_split_back():
    model = RecordingModel(delay=0.01)
    batcher = MicroBatcher(model, name="m", max_batch=4, max_wait_ms=50, max_queue=64)
    sizes = asyncio.run(_run_concurrently(batcher, 10))
    assert sum(model.batches) == 10
    assert max(model.batches) == 4 and len(model.batches) < 10
    assert all(1 <= int(s) <= 4 for s in sizes)


class OverlapModel(RecordingModel):
    """Records how many runs were inside it at the same time."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.inside = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            return super().__call__(x)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_batch_concurrency_bounds_the_runs_in_flight(concurrency):
    model = OverlapModel(delay=0.03)
    batcher = MicroBatcher(
        model, name="m", max_batch=2, max_wait_ms=5, max_queue=64, concurrency=concurrency
    )
    sizes = asyncio.run(_run_concurrently(batcher, 24))  # rows still come back to their owner
    assert sum(model.batches) == 24 and max(model.batches) <= 2
    assert model.peak == concurrency
    assert all(1 <= int(s) <= 2 for s in sizes)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_lone_request_runs_inline_and_a_busy_model_batches(concurrency):
    """try_run (from a worker thread) runs at once only when no run is in flight and nothing
    is queued (whatever batch_concurrency allows); inline runs and batches share the run
    slots, and what it refuses still batches."""
    model = OverlapModel(delay=0.05)
    batcher = MicroBatcher(
        model, name="m", max_batch=4, max_wait_ms=5, max_queue=64, concurrency=concurrency
    )

    async def scenario() -> None:
        x = np.full((1, 2, 2), 3, np.float32)
        assert batcher.try_run(x) is None  # not started yet
        batcher.start()
        lone = await asyncio.to_thread(batcher.try_run, x)
        assert lone is not None and lone.batch_size == 1 and lone.queue_ms == 0
        np.testing.assert_array_equal(lone.outputs[0], x * 2)
        assert model.batches == [1] and batcher.batches_run == 1

        # an inline run holds a slot: queued requests batch (beside it, with a second slot)
        inline = asyncio.ensure_future(asyncio.to_thread(batcher.try_run, x))
        while model.inside == 0:
            await asyncio.sleep(0.001)
        assert await asyncio.to_thread(batcher.try_run, x) is None  # the slot is taken
        queued = [batcher.submit(np.full((1, 2, 2), i, np.float32)) for i in range(3)]
        results = await asyncio.gather(*queued)
        assert (await inline) is not None
        assert [r.batch_size for r in results] == [3, 3, 3]
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r.outputs[0], np.full((1, 2, 2), 2 * i, np.float32))
        assert model.peak == concurrency and model.batches == [1, 1, 3]
        await batcher.close()
        assert batcher.try_run(x) is None  # closed

    asyncio.run(scenario())


def test_finish_runs_per_request_in_the_batch_thread_and_fails_alone():
    """submit(finish=...) gets its answer made from its own rows, off the event loop; a
    finish that raises fails only its own request."""
    model = RecordingModel(delay=0.02)
    batcher = MicroBatcher(model, name="m", max_batch=4, max_wait_ms=20, max_queue=64)
    loop_thread = threading.get_ident()
    seen_threads: set[int] = set()

    def finish(outputs: list[np.ndarray]) -> float:
        seen_threads.add(threading.get_ident())
        if float(outputs[1][0]) == 4.0 * 2:  # request 2's rows
            raise ValueError("bad rows")
        return float(outputs[0].max())

    async def scenario() -> list[object]:
        batcher.start()
        calls = [batcher.submit(np.full((1, 2, 2), i, np.float32), finish=finish) for i in range(4)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert model.batches == [4]
    assert [r.answer for r in results if not isinstance(r, BaseException)] == [0.0, 2.0, 6.0]
    assert isinstance(results[2], ValueError)
    assert loop_thread not in seen_threads and len(seen_threads) == 1


def test_a_full_batch_waits_in_the_model_thread_not_on_the_event_loop():
    """With a full batch queued behind the running one, the model's thread starts it the
    moment the first ends, even while the event loop is busy elsewhere."""
    spans: list[tuple[float, float]] = []

    def model(x: np.ndarray) -> list[np.ndarray]:
        started = time.perf_counter()
        time.sleep(0.05)
        spans.append((started, time.perf_counter()))
        return [x * 2]

    batcher = MicroBatcher(model, name="m", max_batch=4, max_wait_ms=0, max_queue=64)

    async def scenario() -> list[int]:
        batcher.start()
        calls = [
            asyncio.ensure_future(batcher.submit(np.full((1, 2), i, np.float32))) for i in range(8)
        ]
        while not spans and batcher.batches_run == 0 and batcher.depth:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # the first batch runs, the second is formed
        time.sleep(0.2)  # the event loop is busy: nothing it does can start a batch now
        results = await asyncio.gather(*calls)
        await batcher.close()
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r.outputs[0], [[2.0 * i, 2.0 * i]])
        return [r.batch_size for r in results]

    assert asyncio.run(scenario()) == [4] * 8
    (_, first_end), (second_start, _) = spans
    assert second_start - first_end < 0.03, spans


def test_stack_rows_is_concatenate():
    rows = [np.random.default_rng(i).random((n, 3, 2), np.float32) for i, n in enumerate([1, 2, 1])]
    stacked = stack_rows(rows)
    np.testing.assert_array_equal(stacked, np.concatenate(rows))
    assert stacked.dtype == np.float32 and stacked.flags.c_contiguous


def test_full_queue_is_refused_with_retry_after():
    async def scenario() -> tuple[int, int]:
        model = RecordingModel(delay=0.05)
        batcher = MicroBatcher(model, name="m", max_batch=1, max_wait_ms=0, max_queue=3)
        batcher.start()
        calls = [batcher.submit(np.zeros((1, 1, 1), np.float32)) for _ in range(8)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.close()
        refused = [r for r in results if isinstance(r, Overloaded)]
        assert all(r.headers["Retry-After"] == "1" for r in refused)
        return len(refused), sum(not isinstance(r, BaseException) for r in results)

    refused, served = asyncio.run(scenario())
    assert refused >= 4 and served >= 3 and refused + served == 8


def test_a_failing_run_fails_only_its_batch():
    calls = {"n": 0}

    def flaky(x: np.ndarray) -> list[np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return [x]

    async def scenario() -> None:
        batcher = MicroBatcher(flaky, name="m", max_batch=1, max_wait_ms=0, max_queue=8)
        batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(np.zeros((1, 1), np.float32))
        ok = await batcher.submit(np.ones((1, 1), np.float32))
        np.testing.assert_array_equal(ok.outputs[0], [[1.0]])
        await batcher.close()

    asyncio.run(scenario())


def test_service_imports_and_serves_without_torch(tiny_classifier_dir):
    """The serving install has no torch: block it and run a real request."""
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from tests.support.app import serve
from tests.support.images import encode, noise_image
from pathlib import Path
with serve(Path({str(tiny_classifier_dir)!r})) as client:
    r = client.post("/classify", files={{"image": ("a.png", encode(noise_image(), "PNG"))}})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 3
assert "torchvision" not in sys.modules
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_built_in_defaults_win_over_a_user_model_that_sorts_first():
    from types import SimpleNamespace as NS

    from service.settings import Settings

    preferred = Settings(_env_file=None).default_models  # type: ignore[call-arg]
    cards = [NS(name="cats", task="classify"), NS(name="mobilenet_v2-imagenet", task="classify")]
    assert pick_defaults(cards, preferred) == {"classify": "mobilenet_v2-imagenet"}  # type: ignore[arg-type]
