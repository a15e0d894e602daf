"""The fused MC kernel (``kernels.c``), compiled at first use; without it the engine takes its torch path.

:func:`load` builds ``kernels.c`` with the system C compiler (``cc -O3 -march=native -fopenmp``; IEEE arithmetic,
no fast-math) into ``$MCDROP_CACHE/kernels`` (default ``~/.cache/mcdrop/kernels``), keyed by the source and the
CPU, and opens it with ``ctypes`` (which releases the GIL). Built with OpenMP it runs on the OpenMP threads torch
uses: the process loads one libgomp, so torch's threads, which spin for a while after each parallel operation,
do the work instead of competing with other threads for the cores. ``MCDROP_KERNEL_CFLAGS`` adds compiler
flags (the tests build the AVX2 and SSE variants on an AVX-512 machine with ``-mno-avx512f`` and ``-mno-avx``).
With no compiler, a failed build, or ``MCDROP_KERNELS=0``, :func:`load` returns None after one log line.  Where
``-fopenmp`` fails (a gcc without libgomp's development files) the kernel is built without OpenMP, logged once,
and :meth:`Kernels.sample` runs its parts on a Python thread pool instead (:func:`describe` says which).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch

from mcdrop.errors import ModelError

__all__ = ["GrowingPool", "KernelBuildError", "Kernels", "compile_library", "describe", "load", "load_once",
           "threads_for"]

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_PAIRS_PER_THREAD = 16
"""Pairs a thread must have before the work is split (below it, waking a thread costs more than it saves)."""


def threads_for(items: int) -> int:
    """Threads for ``items`` independent pieces of work: torch's count, fewer when each would get under
    :data:`MIN_PAIRS_PER_THREAD`."""
    return max(1, min(torch.get_num_threads(), items // MIN_PAIRS_PER_THREAD))


class GrowingPool:
    """A thread pool for a kernel built without OpenMP: made at first use and grown (never rebuilt per call) when a
    call needs more threads. An outgrown pool is not shut down: another call may still be submitting to it (its
    idle threads end with the process)."""

    def __init__(self, name: str) -> None:
        self._name, self._size, self._lock = name, 0, threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def get(self, threads: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._size < threads:
                self._pool, self._size = ThreadPoolExecutor(threads, self._name), threads
            return self._pool


class KernelBuildError(ModelError, RuntimeError):
    """The fused kernel could not be compiled (no C compiler, or every flag set failed); :func:`load` logs it."""


class Kernels:
    """The compiled library: ``mlp_sample`` (see ``kernels.c``) and whether it runs on OpenMP threads."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, i32, u64, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_uint64, ctypes.c_void_p
        common: list[Any] = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, ptr, u64, ptr, i64,
                             ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, ptr]
        self.mlp_sample = library.mlp_sample
        self.mlp_sample.argtypes = [i32, *common]
        self.mlp_sample.restype = None
        self.mlp_sample_part = library.mlp_sample_part
        self.mlp_sample_part.argtypes = [i32, i32, *common]
        self.mlp_sample_part.restype = None
        self.openmp = bool(library.mcdrop_openmp())
        self._pool = GrowingPool("mcdrop-kernel")

    def threads(self, pairs: int) -> int:
        """Threads for ``pairs`` passes: torch's count (with OpenMP, the same pool torch uses), fewer for small
        calls."""
        return threads_for(pairs)

    def sample(self, threads: int, *args: Any) -> None:
        """``mlp_sample(threads, *args)``: on OpenMP threads, or, in a build without OpenMP, as ``threads`` parts on
        a thread pool (``mlp_sample_part``; ctypes releases the GIL).  The parts are the same pair ranges either way,
        and each pair's sums do not depend on the split, so the outputs are the same bits."""
        if self.openmp or threads == 1:
            self.mlp_sample(threads, *args)
            return
        nnz = args[-1]
        counts = [type(nnz)() for _ in range(threads)]
        pool = self._pool.get(threads)
        futures = [pool.submit(self.mlp_sample_part, t, threads, *args[:-1], counts[t]) for t in range(threads)]
        for future in futures:
            future.result()
        for part in counts:
            for layer, value in enumerate(part):
                nnz[layer] += value

    def describe(self) -> str:
        """One line for diagnostics: how the kernel runs on this machine."""
        how = "OpenMP threads shared with torch" if self.openmp else \
            "a thread pool (built without OpenMP: the compiler lacks -fopenmp or libgomp's files)"
        return f"fused MLP kernel: {how}, up to {torch.get_num_threads()} threads"


def describe() -> str:
    """One line: the fused kernel's state here (for ``mcdrop bench`` and logs)."""
    kernels = load()
    if kernels is None:
        why = "switched off (MCDROP_KERNELS=0)" if os.environ.get("MCDROP_KERNELS", "1") == "0" else \
            "unavailable (no C compiler or a failed build; see the log)"
        return f"fused MLP kernel: {why}; MC passes use torch operations"
    return kernels.describe()


_loaded: dict[str, Any] = {}
_load_lock = threading.Lock()


def _cache_dir() -> Path:
    return Path(os.environ.get("MCDROP_CACHE", Path.home() / ".cache" / "mcdrop")) / "kernels"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
        flags = next((line for line in lines if line.startswith(("flags", "Features"))), "")
        model = next((line for line in lines if line.startswith(("model name", "CPU part"))), "")
    except OSError:
        flags, model = "", platform.processor()
    return hashlib.sha256(f"{platform.machine()}|{model}|{flags}".encode()).hexdigest()[:12]


def source() -> str:
    """The C source shipped with the package."""
    return resources.files("mcdrop.sampling").joinpath("kernels.c").read_text()


def load_once(key: str, build: Callable[[], T], unavailable: str) -> T | None:
    """``build()`` once per process, cached under ``key``; None (and one log line ``unavailable`` with the error)
    when it fails, and always None when ``MCDROP_KERNELS=0``."""
    if os.environ.get("MCDROP_KERNELS", "1") == "0":
        return None
    with _load_lock:
        if key not in _loaded:
            built = None
            try:
                built = build()
            except (OSError, subprocess.SubprocessError, RuntimeError) as err:  # KernelBuildError, or a load failure
                log.warning("mcdrop: %s (%s)", unavailable, err)
            _loaded[key] = built
        return _loaded[key]


def _build_kernels() -> Kernels:
    kernels = Kernels(ctypes.CDLL(str(compile_library(source(), "mcdrop"))))
    if not kernels.openmp:
        log.warning("mcdrop: the fused MC kernel was built without OpenMP (the compiler has no working "
                    "-fopenmp); it splits its work over a thread pool instead")
    return kernels


def load() -> Kernels | None:
    """The compiled kernels, or None (``MCDROP_KERNELS=0``, no compiler, a failed build): logged once."""
    return load_once("kernels", _build_kernels, "fused MC kernel unavailable; sampling with torch operations, "
                     "which is slower")


def compile_library(code: str, stem: str) -> Path:
    """``code`` (C) built into a shared library in the cache, named by ``stem``, the source, the flags and the CPU;
    reused when it is there.  Raises :class:`KernelBuildError` when no compiler or flag set works."""
    user_flags = os.environ.get("MCDROP_KERNEL_CFLAGS", "").split()  # appended, e.g. -mno-avx512f
    digest = hashlib.sha256("\0".join([code, *user_flags]).encode()).hexdigest()[:12]
    target = _cache_dir() / f"{stem}-{digest}-{_cpu_signature()}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise KernelBuildError("no C compiler (cc, gcc or clang) on PATH; set CC to one")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / f"{stem}.c", Path(tmp) / target.name
        src.write_text(code)
        errors = ""
        # OpenMP: the kernel then shares torch's libgomp threads; -march=native: this CPU's vector units.
        # Each is dropped in turn where the compiler lacks it.
        for extra in (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []):
            cmd = [compiler, "-O3", *extra, "-fno-math-errno", *user_flags, "-shared", "-fPIC", str(src), "-o",
                   str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(out, target)  # atomic: another process may be building the same file
                return target
            errors = proc.stderr.strip()[:300]
        raise KernelBuildError(f"{compiler} failed: {errors}")
