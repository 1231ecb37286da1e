"""Stand-ins for a model session behind the micro-batcher."""

from __future__ import annotations

import threading
import time

import numpy as np


class RecordingModel:
    """Stands in for a session: doubles its input, records the batch sizes it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.release = threading.Event()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.batches.append(x.shape[0])
        time.sleep(self.delay)
        return [x * 2, x.sum(axis=(1, 2))]
