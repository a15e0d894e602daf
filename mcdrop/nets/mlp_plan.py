"""The fast path for :class:`~mcdrop.nets.models.DropoutMLP`: MC passes by the fused kernel (``kernels.c``).

Same masks as the generic path (dropout module ``j`` draws from stream ``(j, 0)``), same outputs within float32
rounding (README "Reproducibility"), far fewer multiply-adds: each layer sums the rows of ``W^T`` of the units
that are nonzero after its ReLU and dropout, and the first layer, whose input is dense, is a correction of
``z W^T`` (computed once per row) by the rows of the dropped inputs:

    ((z * m) / (1 - p)) W^T = (z W^T - (z * (1 - m)) W^T) / (1 - p),

``p D H`` multiply-adds per pass instead of ``D H`` (for ``p > 1/2`` the sum over the kept inputs, ``(1 - p) D H``).

A layer's cost is proportional to its input's density (the share of units that survive).  The first layer's
density is ``min(p, 1 - p) <= 1/2``; a hidden layer's depends on the data (ReLU zeros times ``1 - p``), so the
plan counts it, and once it has seen :data:`DENSITY_PAIRS` passes of a model without input dropout whose hidden
layers keep more than :data:`SPARSE_MAX_DENSITY` of their inputs, it hands that engine back to the generic path
(one log line).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import torch
from torch import Tensor, nn

from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling import functional as F
from mcdrop.sampling import kernels as _kernels
from mcdrop.sampling import rng
from mcdrop.sampling.engine import register_fast_path
from mcdrop.sampling.kernels import Kernels
from mcdrop.sampling.layers import Dropout

__all__ = ["DENSITY_PAIRS", "SPARSE_MAX_DENSITY", "MLPPlan"]

log = logging.getLogger(__name__)

SPARSE_MAX_DENSITY = 0.6
"""Hidden-layer density above which the generic path (matrix products, masks in torch) is faster than this one,
for a model without input dropout (whose first layer the generic path also runs once per input).  Measured
(BENCHMARKS.md §1c): one sparse sum costs as much as a matrix product at a density of about 0.45, but the fused
path as a whole, which also saves the masks' passes over memory, costs as much as the generic one at hidden
densities of about 0.6-0.7 (two runs); with input dropout it is faster at any density (the generic path cannot
share the first layer then)."""

DENSITY_PAIRS = 4096
"""Passes (sample x row) counted before the density of the hidden layers is judged."""

BLOCK = 64
"""Pairs whose sums share a column tile of ``W^T`` while it is in cache."""

_i64p = ctypes.POINTER(ctypes.c_int64)


def _arr(ctype: Any, values: list[Any]) -> Any:
    return (ctype * len(values))(*values)


def _version(t: Tensor) -> int:
    """The tensor's in-place edit counter (inference tensors have none: edits to them in place are not seen)."""
    return -1 if t.is_inference() else t._version


class _Weights:
    """The model's numbers as the kernel reads them: ``W^T`` contiguous, biases, mask rates."""

    def __init__(self, model: DropoutMLP, linears: list[nn.Linear], dropouts: list[Dropout | None]) -> None:
        with torch.no_grad():
            self.wt = [lin.weight.detach().t().contiguous() for lin in linears]
            self.bias = [lin.bias.detach().contiguous() for lin in linears]
        rates = [F.quantized_rate(d.p) if d is not None else (16, 0, 0.0) for d in dropouts]
        self.p_in = dropouts[0].p if dropouts[0] is not None else 0.0
        self.input_mode = 0 if dropouts[0] is None else (1 if self.p_in <= 0.5 else 2)
        self.dims = _arr(ctypes.c_int64, [linears[0].in_features] + [lin.out_features for lin in linears])
        self.wt_ptr = _arr(ctypes.c_void_p, [w.data_ptr() for w in self.wt])
        self.bias_ptr = _arr(ctypes.c_void_p, [b.data_ptr() for b in self.bias])
        # dropout module j of the model (counting only those present) draws from stream (j, 0), as in the engine
        first = 0 if dropouts[0] is not None else -1
        self.streams = _arr(ctypes.c_uint64, [rng._stream_word((max(first + j, 0), 0)) for j in range(len(dropouts))])
        self.bits = _arr(ctypes.c_int32, [r[0] for r in rates])
        self.thresholds = _arr(ctypes.c_int32, [r[1] for r in rates])
        self.scales = _arr(ctypes.c_float, [1.0 / (1.0 - r[2]) for r in rates])
        self.width = max(lin.in_features for lin in linears)  # the longest list of surviving units
        self.out_width = max(lin.out_features for lin in linears)
        self.words = max(-(-d.in_features * r[0] // 64) for d, r in zip(linears, rates, strict=True)) + 1


class MLPPlan:
    """How to sample a :class:`DropoutMLP` with the fused kernel (built by :meth:`for_model`)."""

    def __init__(self, model: DropoutMLP, linears: list[nn.Linear], dropouts: list[Dropout | None],
                 kernels: Kernels) -> None:
        self.model, self.kernels = model, kernels
        self._linears, self._dropouts = linears, dropouts
        self._weights: _Weights | None = None
        self._version: tuple[object, ...] = ()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.pairs = 0
        self.nnz = [0] * len(linears)
        self.disabled = False

    @classmethod
    def for_model(cls, model: nn.Module, kernels: Kernels | None) -> MLPPlan | None:
        """A plan if ``model`` is a float32 CPU DropoutMLP of the plain form (optional input ``Dropout``, then
        ``Linear, ReLU, Dropout`` one or more times, then ``Linear``) with mcdrop ``Dropout`` at 0 < p < 1."""
        if kernels is None or type(model) is not DropoutMLP:
            return None
        modules = list(model.net)
        dropouts: list[Dropout | None] = [None]
        if modules and type(modules[0]) is Dropout:
            dropouts, modules = [modules[0]], modules[1:]
        linears: list[nn.Linear] = []
        while len(modules) >= 3 and type(modules[0]) is nn.Linear and type(modules[1]) is nn.ReLU \
                and type(modules[2]) is Dropout:
            linears.append(modules[0])
            dropouts.append(modules[2])
            modules = modules[3:]
        if len(modules) != 1 or type(modules[0]) is not nn.Linear or not linears or len(linears) >= 64:
            return None
        linears.append(modules[0])
        if any(lin.bias is None or lin.weight.dtype != torch.float32 or lin.weight.device.type != "cpu"
               for lin in linears):
            return None
        return cls(model, linears, dropouts, kernels)

    def _current(self) -> _Weights | None:
        """The kernel's copy of the weights, refreshed when a weight or a rate changed; None when a rate is not
        in (0, 1) (the generic path handles p = 0 and p = 1)."""
        version = tuple((p.data_ptr(), _version(p)) for lin in self._linears for p in (lin.weight, lin.bias)) \
            + tuple(d.p for d in self._dropouts if d is not None)
        if version != self._version:
            with self._lock:
                if any(d is not None and not 0.0 < d.p < 1.0 for d in self._dropouts):
                    return None
                self._weights, self._version = _Weights(self.model, self._linears, self._dropouts), version
        return self._weights

    def _workspace(self, w: _Weights, threads: int) -> tuple[Any, ...]:
        """Per-thread buffers (in a thread-local: concurrent calls on one engine do not share them)."""
        key = (w.width, w.out_width, w.words, threads)
        space = getattr(self._local, "space", None)
        if space is None or space[0] != key:
            space = (key, torch.empty(threads * BLOCK * w.out_width), torch.empty(threads * BLOCK * w.width,
                     dtype=torch.int32), torch.empty(threads * BLOCK * w.width),
                     torch.empty(threads * BLOCK, dtype=torch.int32), (ctypes.c_void_p * (threads * BLOCK))(),
                     torch.empty(threads * w.words, dtype=torch.int64))
            self._local.space = space
        return space[1:]

    def sample(self, x: Tensor, key: int | Tensor, rows: Tensor, samples: Tensor) -> Tensor | None:
        """Model outputs of every (sample, row) pair, sample-major, or None when this model needs the generic
        path. Samples must be consecutive. Shape: x ``(B, *)`` -> ``(S * B, ...)``."""
        w = self._current()
        if w is None or self.disabled:
            return None
        model = self.model
        z = ((x.flatten(1) - model.input_shift) / model.input_scale).contiguous()
        base = z @ w.wt[0] if w.input_mode != 2 else z  # z W1^T, once per row
        b, s = z.shape[0], samples.numel()
        pairs = b * s
        n_layers = len(self._linears)
        out = torch.empty((pairs, int(w.dims[n_layers])), dtype=torch.float32)
        rows = rows.contiguous()
        row_keys = key.contiguous() if isinstance(key, Tensor) else None
        threads = self.kernels.threads(pairs)
        ybuf, idx, val, cnt, init, words = self._workspace(w, threads)
        nnz = (ctypes.c_int64 * n_layers)()
        self.kernels.sample(
            threads, pairs, b, n_layers, w.dims, w.wt_ptr, w.bias_ptr, w.streams, w.bits, w.thresholds, w.scales,
            w.input_mode, row_keys.data_ptr() if row_keys is not None else None,
            key & 0xFFFFFFFFFFFFFFFF if isinstance(key, int) else 0, rows.data_ptr(), int(samples[0]) if s else 0,
            z.data_ptr(), base.data_ptr(), out.data_ptr(), ybuf.data_ptr(), idx.data_ptr(), val.data_ptr(),
            cnt.data_ptr(), init, words.data_ptr(), BLOCK, w.width, BLOCK * w.out_width, w.words, nnz)
        self._count(pairs, list(nnz))
        return self._head(out)

    def densities(self) -> list[float]:
        """Measured share of surviving inputs per layer (the first: dropped inputs for a correction)."""
        if not self.pairs:
            return []
        widths = [lin.in_features for lin in self._linears]
        return [n / (self.pairs * width) for n, width in zip(self.nnz, widths, strict=True)]

    def _count(self, pairs: int, counts: list[int]) -> None:
        if self.pairs >= DENSITY_PAIRS:
            return
        with self._lock:
            self.pairs += pairs
            self.nnz = [a + b for a, b in zip(self.nnz, counts, strict=True)]
            if self.pairs >= DENSITY_PAIRS:
                dense = [(i, d) for i, d in enumerate(self.densities()) if i > 0 and d > SPARSE_MAX_DENSITY
                         and self._dropouts[0] is None]
                if dense:
                    self.disabled = True
                    log.info("mcdrop: layer %d keeps %.0f%% of its inputs (> %.0f%%): the fused MLP kernel would be "
                             "slower than the generic path; using the generic path", dense[0][0] + 1,
                             100 * dense[0][1], 100 * SPARSE_MAX_DENSITY)

    def _head(self, out: Tensor) -> Tensor:
        return self.model.head_output(out)


register_fast_path(DropoutMLP, lambda model: MLPPlan.for_model(model, _kernels.load()))
