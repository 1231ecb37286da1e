"""Per-request timing breakdown, reported in responses as `timing_ms`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")


class Timing:
    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.steps: dict[str, float] = {}

    def add(self, step: str, ms: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + ms

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - started) * 1000)

    def report(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.steps.items()}
        out["total"] = round((time.perf_counter() - self._start) * 1000, 3)
        return out


async def in_thread(timing: Timing, step: str, fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound `fn(*args)` (decode, resize) off the event loop and time it as `step`."""
    started = time.perf_counter()
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    finally:
        timing.add(step, (time.perf_counter() - started) * 1000)
