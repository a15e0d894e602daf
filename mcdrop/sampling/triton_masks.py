"""Keyed dropout masks on a GPU in one fused pass (Triton): hash, compare and scale in registers.

The torch path (:func:`mcdrop.sampling.functional.keep_mask`) materialises the int64 words of
:func:`mcdrop.sampling.rng.random_words` and runs about a dozen elementwise passes over them.  Here one kernel
computes, for every element ``(q, f, i)`` of a pass (pair ``q`` = (sample, row), unit ``f``, trailing position
``i`` of a channel dropout), the same bits::

    word = mix64(key[q] + (f // L + 1) * GOLDEN),   L = 64 / bits lanes per word
    lane = (word >> (bits * (f % L))) & (2**bits - 1)
    dropped = (lane ^ 2**(bits - 1)) < threshold                (functional.drop_lanes)
    out[q, f, i] = x[row(q), f, i] * scale * (1 - dropped),     scale = 1 / (1 - p_used)

with ``row(q) = q`` for an expanded input ``(S*B, ...)`` and ``q % B`` for an unexpanded one ``(B, ...)``.  The
masks are bit-identical to the torch path; outputs too (a 0/1 mask times ``x * scale`` rounds once either way).

When it runs (:func:`enabled`): on CUDA tensors when Triton imports and ``MCDROP_TRITON`` is not ``0``.  On the CPU
only under Triton's interpreter (``TRITON_INTERPRET=1`` and ``MCDROP_TRITON=1``), which is how the tests check the
bits without a GPU.  The kernel is compiled at first use, so the interpreter setting is read then.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["BLOCK", "available", "enabled", "keep_mask", "mc_channel_dropout", "mc_dropout"]

log = logging.getLogger(__name__)

BLOCK = 1024
"""Elements of one pair's activation per program."""


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, or None when Triton does not import (logged once)."""
    try:
        import triton
    except ImportError as err:  # CPU-only installs: the torch path serves
        log.info("mcdrop: Triton unavailable (%s); keyed masks use torch operations", err)
        return None

    from mcdrop.sampling import _triton_kernels

    return triton, _triton_kernels.masked_scale


def available() -> bool:
    """Whether Triton imports here."""
    return _kernel() is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def enabled(device: torch.device) -> bool:
    """Whether keyed masks on ``device`` take this module's kernel (see the module docstring)."""
    setting = os.environ.get("MCDROP_TRITON", "auto").strip().lower()
    if setting == "0":
        return False
    if device.type == "cuda":
        return available()
    return setting == "1" and _interpreting() and available()


def _launch(x: Tensor | None, keys: Tensor, n_units: int, inner: int, p: float, out_dtype: torch.dtype,
            expanded: bool, scale_dtype: torch.dtype = torch.float32) -> Tensor:
    from mcdrop.sampling.functional import quantized_rate

    triton, kernel = _kernel()
    bits, threshold, p_used = quantized_rate(p)
    s, b = keys.shape
    n_elem = n_units * inner
    scale = float(torch.tensor(1.0 / (1.0 - p_used), dtype=scale_dtype))  # as the torch path rounds it
    out = torch.empty((s * b, n_elem), dtype=out_dtype, device=keys.device)
    if s * b and n_elem:
        grid = (s * b, triton.cdiv(n_elem, BLOCK))
        kernel[grid](x if x is not None else keys, keys.contiguous(), out, n_elem, b, scale,
                     INNER=inner, BITS=bits, THRESHOLD=threshold, EXPANDED=expanded, HAS_X=x is not None,
                     BLOCK_SIZE=BLOCK)
    return out


def keep_mask(keys: Tensor, n: int, p: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`mcdrop.sampling.functional.keep_mask` (0 < p < 1), bit for bit. Shape: keys ``(S, B)`` -> ``(S, B, n)``."""
    return _launch(None, keys, n, 1, p, dtype, True).view(*keys.shape, n)


def mc_dropout(x: Tensor, keys: Tensor, p: float, expanded: bool) -> Tensor:
    """:func:`mcdrop.sampling.functional.mc_dropout` for 0 < p < 1. Shape: x ``(B, *F)`` or ``(S*B, *F)`` -> ``(S*B, *F)``."""
    feat = x.shape[1:]
    y = _launch(x.contiguous(), keys, math.prod(feat), 1, p, x.dtype, expanded)
    return y.view(-1, *feat)


def mc_channel_dropout(x: Tensor, keys: Tensor, p: float, expanded: bool) -> Tensor:
    """:func:`mcdrop.sampling.functional.mc_channel_dropout` for 0 < p < 1. Shape: ``(B, C, *)`` or ``(S*B, C, *)``."""
    feat = x.shape[1:]
    inner = math.prod(feat[1:])
    y = _launch(x.contiguous(), keys, feat[0], inner, p, x.dtype, expanded, scale_dtype=x.dtype)  # mask * scale in x.dtype
    return y.view(-1, *feat)
