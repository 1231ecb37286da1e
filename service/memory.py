"""Process-wide memory settings that keep a long-running server's RSS flat."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger("service.memory")

_M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas. Decode, preprocess and ORT run on many threads;
    with one arena each, freed image buffers stay scattered and RSS creeps up for hours.
    A no-op (False) off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def give_back() -> bool:
    """Return freed heap to the OS after a model is unloaded: collect the cycles that still hold
    a session, then `malloc_trim(0)`. Without it glibc keeps the freed arena pages and RSS climbs
    with every load/unload cycle. A no-op (False) off glibc."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False
