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

__all__ = ["DEVICES", "element_budget_for", "release_free_memory", "resolve_device", "tune_allocator"]

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

    Settles nothing else: the precision (TF32 or not) is set explicitly by :func:`mcdrop.sampling.precision.apply_precision`.
    Raises ValueError naming what was expected and what is available.
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
    return torch.device(text)


CPU_ELEMENT_BUDGET = 1 << 24
"""Numbers in the widest activation of one chunk on a CPU: 64 MB of float32, measured best on 2 cores
(BENCHMARKS.md); larger chunks leave the caches without doing fewer operations."""
MAX_ELEMENT_BUDGET = 1 << 28
"""The most on a GPU (1 GiB of float32 per activation): the H200 measurement in issue 23 took 57 ms at 2**28
against 76 ms at 2**24 for B = 4096, N = 100."""
GPU_MEMORY_SHARE = 64
"""A GPU chunk's widest activation may take 1/64 of the device's memory: a pass holds a few activations of that
width at once (input, output, masks), and the server may run several calls and models side by side."""


def element_budget_for(device: torch.device, memory_bytes: int | None = None) -> int:
    """The engine's chunk budget on ``device``: :data:`CPU_ELEMENT_BUDGET` on a CPU; on a GPU the largest power of two
    within ``memory_bytes / (4 * GPU_MEMORY_SHARE)`` float32 numbers (``memory_bytes``: the device's total memory,
    read from CUDA when None), clamped to ``[CPU_ELEMENT_BUDGET, MAX_ELEMENT_BUDGET]``."""
    if device.type != "cuda":
        return CPU_ELEMENT_BUDGET
    if memory_bytes is None:
        memory_bytes = torch.cuda.get_device_properties(device).total_memory
    numbers = max(1, memory_bytes // (4 * GPU_MEMORY_SHARE))
    return max(CPU_ELEMENT_BUDGET, min(MAX_ELEMENT_BUDGET, 1 << (numbers.bit_length() - 1)))
