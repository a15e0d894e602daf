"""Process-level settings for fast CPU inference, called by mcdrop's entry points (service, CLI, bench).

Monte Carlo passes allocate activations of tens of MB.  glibc returns such blocks to the OS on free
and the next allocation faults every page in again, which cost ~40% of an MC call in measurements
(BENCHMARKS.md).  :func:`tune_allocator` keeps them in the heap instead.  The library never calls it on
import: it changes the whole process, so programs opt in.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Serve blocks below ``mmap_threshold`` bytes from the heap and keep up to ``trim_threshold`` free.

    Returns True when glibc accepted both settings, False elsewhere (musl, macOS, Windows): harmless.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
