"""Process-level settings for inference, called by mcdrop's entry points (service, CLI, bench): the allocator
and the device.

Monte Carlo passes allocate activations of tens of MB.  glibc returns such blocks to the OS on free
and the next allocation faults every page in again, which cost ~40% of an MC call in measurements
(BENCHMARKS.md).  :func:`tune_allocator` keeps them in the heap instead.  The library never calls it on
import: it changes the whole process, so programs opt in.  :func:`release_free_memory` gives the free heap back
after a rare large transient (a 16 MB request body parsed into Python objects) that would otherwise stay.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

__all__ = ["DEVICES", "release_free_memory", "resolve_device", "tune_allocator"]

DEVICES = "cpu, cuda, cuda:N or auto (cuda when one is available, else cpu)"

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


def release_free_memory() -> bool:
    """Return the free memory of every glibc heap to the OS (``malloc_trim(0)``); False where there is none."""
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0)) if name else False
    except (OSError, AttributeError):
        return False


def resolve_device(spec: str | None) -> torch.device:
    """The device named by ``spec`` (:data:`DEVICES`; None is cpu), checked against this machine.

    On CUDA, float32 matrix products are kept in full float32 (no TF32), so answers agree with the CPU within
    README "Reproducibility"'s tolerances.  Raises ValueError naming what was expected and what is available.
    """
    text = (spec or "cpu").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device has to be one of {DEVICES}, but got {spec!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: no CUDA device is available here (torch.cuda.is_available() is False); "
                         "use cpu or auto")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ValueError(f"device {spec!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    return torch.device(text)
