"""One image through a model: decode -> preprocess -> run -> postprocess, in as few thread
hops as the model's load allows.

Every hop off the event loop and back costs two thread wake-ups and some event-loop work, a
large share of a 3 ms model's request. So the steps before the model run in one worker
thread, and when the model is idle (a lone client) the run and the postprocess happen in that
same thread too: one hop per request, as in a plain synchronous handler. When the model is
busy the tensor joins its next micro-batch instead (MicroBatcher.try_run decides), and
`finish` runs after the batch in the batcher's thread or, when it is heavy, in a worker
thread: never on the event loop, where numpy's GIL releases (and the wait to get it back
from the decode threads) would stall every other request.

Step times (decode, preprocess, queue, inference, postprocess) go into the request's Timing on
the event loop: worker threads only measure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from service.images import DecodedImage, EncodedImage
from service.runtime import ModelRuntime
from service.timing import Timing, image_pool, in_thread, off_loop

M = TypeVar("M")  # what preprocess hands to postprocess: geometries, ...
R = TypeVar("R")  # one image's answer

Prepare = Callable[[DecodedImage], tuple[np.ndarray, M]]  # -> (1, ...) tensor, meta
Finish = Callable[[list[np.ndarray], M], R]  # this image's outputs (1, ...), meta -> answer


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One image's result, as classify() and detect() return it."""

    image: DecodedImage  # what was run (its original size is the response's frame)
    answer: R
    batch_size: int  # rows in the run this image was part of


@dataclass
class _Staged(Generic[M, R]):
    image: DecodedImage
    tensor: np.ndarray
    meta: M
    steps: dict[str, float]  # ms
    answer: R | None = None
    batch_size: int = 0  # > 0: run and finished here


def _stage(
    runtime: ModelRuntime,
    image: DecodedImage | EncodedImage,
    prepare: Prepare[M],
    finish: Finish[M, R],
) -> _Staged[M, R]:
    """Worker thread: decode (if still encoded) and prepare; run and finish too if idle."""
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(image, EncodedImage):
        image = image.decode()
        t1 = time.perf_counter()
        steps["decode"] = (t1 - t0) * 1000
        t0 = t1
    tensor, meta = prepare(image)
    t1 = time.perf_counter()
    steps["preprocess"] = (t1 - t0) * 1000
    staged: _Staged[M, R] = _Staged(image, tensor, meta, steps)
    ran = runtime.run_now(tensor)
    if ran is not None:
        steps["queue"] = 0.0
        steps["inference"] = ran.run_ms
        t0 = time.perf_counter()
        staged.answer = finish(ran.outputs, meta)
        steps["postprocess"] = (time.perf_counter() - t0) * 1000
        staged.batch_size = ran.batch_size
    return staged


async def run_image(
    runtime: ModelRuntime,
    image: DecodedImage | EncodedImage,
    timing: Timing,
    prepare: Prepare[M],
    finish: Finish[M, R],
    *,
    heavy_finish: bool = False,
) -> Outcome[R]:
    """decode -> `prepare` -> run -> `finish` for one image (see the module doc). After a
    batched run `finish` runs in the batcher's thread right after the batch (a top-k), or,
    with `heavy_finish` (NMS over many boxes), in a worker thread so that the model's thread
    can start the next batch. Never on the event loop."""
    staged = await off_loop(_stage, runtime, image, prepare, finish, pool=image_pool())
    for step, ms in staged.steps.items():
        timing.add(step, ms)
    if staged.batch_size:
        return Outcome(staged.image, staged.answer, staged.batch_size)  # type: ignore[arg-type]
    meta = staged.meta
    if heavy_finish:
        result = await runtime.infer(staged.tensor, timing)
        answer = await in_thread(
            timing, "postprocess", finish, result.outputs, meta, pool=image_pool()
        )
    else:
        result = await runtime.infer(staged.tensor, timing, finish=lambda o: finish(o, meta))
        timing.add("postprocess", result.finish_ms)
        answer = result.answer
    return Outcome(staged.image, answer, result.batch_size)
