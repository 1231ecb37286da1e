"""Process-wide memory settings that keep a long-running server's RSS flat."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
from typing import Any

log = logging.getLogger("service.memory")

_M_ARENA_MAX = -8  # glibc mallopt parameter


def _glibc_call(function: str, *args: int) -> bool:
    """libc.<function>(*args) -> its int result as a bool; False off glibc or without it."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        call: Any = getattr(ctypes.CDLL(name), function)
        return bool(call(*args))
    except (OSError, AttributeError):
        return False


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas. Decode, preprocess and ORT run on many threads;
    with one arena each, freed image buffers stay scattered and RSS creeps up for hours.
    A no-op (False) off glibc."""
    return _glibc_call("mallopt", _M_ARENA_MAX, arenas)


def give_back() -> bool:
    """Return freed heap to the OS after a model is unloaded: collect the cycles that still hold
    a session, then `malloc_trim(0)`. Without it glibc keeps the freed arena pages and RSS climbs
    with every load/unload cycle. A no-op (False) off glibc."""
    gc.collect()
    return _glibc_call("malloc_trim", 0)
