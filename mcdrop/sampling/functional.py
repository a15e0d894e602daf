"""Stateless dropout functions.

Two families:

* training-time functions (``dropout``, ``channel_dropout``, ``gaussian_dropout``,
  ``dropconnect_linear``) draw from torch's generator, optionally an explicit ``generator``;
* keyed Monte Carlo functions (``mc_*``) draw from :mod:`mcdrop.sampling.rng`, one independent mask per
  (sample, row).  They take ``x`` either unexpanded, ``(B, *F)``, or already expanded,
  ``(S*B, *F)`` in sample-major order, and always return ``(S*B, *F)``; ``keys`` is ``(S, B)``.
  Expanding at the first dropout layer is what lets the engine compute everything before it once.

Inverted dropout: a unit is kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, so
``E[h'] = h``.  Keyed masks compare a ``b``-bit uniform with ``t = round(p * 2**b)`` (:func:`quantized_rate`:
``b = 1`` for p = 1/2, ``b = 8`` for p = k/256, ``b = 16`` when no shorter lane is exact); the drop rate actually
used, ``t / 2**b``, is within ``2**-17`` of ``p`` and the scale uses it, so ``E[h'] = h`` holds exactly.
On CUDA the keyed masks are hashed, compared and applied by one Triton kernel (:mod:`mcdrop.sampling.triton_masks`):
the same bits.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from mcdrop.sampling import rng, triton_masks

__all__ = [
    "channel_dropout",
    "check_probability",
    "drop_lanes",
    "dropconnect_linear",
    "dropout",
    "gaussian_dropout",
    "keep_mask",
    "mc_alpha_dropout",
    "mc_channel_dropout",
    "mc_dropconnect_linear",
    "mc_dropout",
    "mc_gaussian_dropout",
    "quantized_rate",
]


def check_probability(p: object, *, name: str = "dropout probability", allow_one: bool = True) -> float:
    """Return ``p`` as a float after checking ``0 <= p <= 1`` (``< 1`` unless ``allow_one``)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise ValueError(f"{name} has to be a real number between 0 and 1, but got {p!r} ({type(p).__name__})")
    value = float(p)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):  # also rejects NaN
        bound = "between 0 and 1" if allow_one else "in [0, 1)"
        raise ValueError(f"{name} has to be {bound}, but got {p}")
    return value


# --------------------------------------------------------------------------- training-time


def dropout(
    x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Inverted dropout: ``h' = h * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` elementwise.

    Shape: any.  ``p = 0`` or ``training=False`` is the identity; ``p = 1`` gives zeros.
    """
    p = check_probability(p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x.zero_() if inplace else torch.zeros_like(x)
    mask = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
    return x.mul_(mask) if inplace else x * mask


def channel_dropout(x: Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Zero whole channels: one Bernoulli(1 - p) per (n, c), broadcast over the trailing dims.

    Shape: ``(N, C, *)`` with at least one trailing dim, e.g. ``(N, C, L)`` or ``(N, C, H, W)``.
    """
    p = check_probability(p)
    if x.dim() < 3:
        raise ValueError(f"channel dropout expects input of shape (N, C, *) with 3 or more dims, but got {tuple(x.shape)}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    shape = (*x.shape[:2], *([1] * (x.dim() - 2)))
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p, generator=generator)
    return x * mask.div_(1.0 - p)


def gaussian_dropout(x: Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Multiplicative Gaussian noise: ``h' = h * (1 + sigma * z)``, ``sigma^2 = p / (1 - p)``.

    The noise has mean 1 and variance ``p / (1 - p)``, the moments of Bernoulli dropout (Srivastava
    et al. 2014).  Shape: any.  Requires ``0 <= p < 1``.
    """
    p = check_probability(p, allow_one=False)
    if not training or p == 0.0:
        return x
    noise = torch.empty_like(x).normal_(generator=generator)
    return x * noise.mul_(math.sqrt(p / (1.0 - p))).add_(1.0)


def dropconnect_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    p: float = 0.5,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Linear layer whose individual weights are dropped: ``y = x (W * M / (1 - p))^T + b``.

    In training one mask ``M ~ Bernoulli(1 - p)`` of shape ``(out, in)`` is shared by the mini-batch.
    Shape: x ``(N, in)``, weight ``(out, in)``, bias ``(out,)`` -> ``(N, out)``.
    """
    p = check_probability(p)
    if training and p > 0.0:
        if p == 1.0:
            weight = torch.zeros_like(weight)
        else:
            mask = torch.empty_like(weight).bernoulli_(1.0 - p, generator=generator)
            weight = weight * mask.div_(1.0 - p)
    return torch.nn.functional.linear(x, weight, bias)


# --------------------------------------------------------------------------- keyed (MC) masks


_LANE_BITS = (1, 2, 4, 8, 16)


def quantized_rate(p: float) -> tuple[int, int, float]:
    """``(bits, threshold, p_used)`` for keyed masks of rate ``0 < p < 1``.

    ``bits`` is the smallest of 1, 2, 4, 8 with ``p * 2**bits`` an integer (one random bit per mask for
    p = 1/2, eight for p = k/256), else 16; ``threshold = round(p * 2**bits)``; ``p_used = threshold / 2**bits``
    is within ``2**-17`` of ``p``.
    """
    bits = next((b for b in _LANE_BITS[:-1] if float(p * (1 << b)).is_integer()), 16)
    threshold = round(p * (1 << bits))
    return bits, threshold, threshold / (1 << bits)


def drop_lanes(words: Tensor, n: int, bits: int, threshold: int) -> Tensor:
    """Whether each of the first ``n`` ``bits``-wide lanes of ``words`` drops its unit.

    Lane ``k`` of a word is bits ``[bits * k, bits * (k + 1))`` (little-endian order), read as a two's-complement
    integer ``s``; the unit is dropped iff ``s < threshold - 2**(bits - 1)``, which has probability
    ``threshold / 2**bits``.  Shape: words ``(..., W)`` -> bool ``(..., n)``.
    """
    half = 1 << (bits - 1)
    if bits in (8, 16):
        lanes = words.view(torch.int8 if bits == 8 else torch.int16)[..., :n]
        return lanes < threshold - half
    shifts = torch.arange(0, 64, bits, dtype=torch.int64, device=words.device)
    lanes = ((words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).flatten(-2)[..., :n]
    return (lanes ^ half) < threshold


def keep_mask(keys: Tensor, n: int, p: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Float keep-mask of 0s and 1s for ``0 < p < 1``, ``P(1) = 1 - p_used``, one independent row per key.

    Shape: keys ``(S, B)`` -> ``(S, B, n)``.
    """
    if triton_masks.enabled(keys.device):  # CUDA: one fused kernel, the same bits
        return triton_masks.keep_mask(keys, n, p, dtype)
    bits, threshold, _ = quantized_rate(p)
    words = rng.random_words(keys, -(-n // (64 // bits)))
    if bits in (8, 16):  # one pass: compare the lanes straight into the float mask
        lanes = words.view(torch.int8 if bits == 8 else torch.int16)[..., :n]
        out = torch.empty((*keys.shape, n), dtype=dtype, device=keys.device)
        return torch.ge(lanes, threshold - (1 << (bits - 1)), out=out)
    return drop_lanes(words, n, bits, threshold).logical_not_().to(dtype)


def _edge_rate(x: Tensor, p: float, s: int, b: int, expanded: bool) -> Tensor | None:
    """The output at p = 0 (``x`` for every sample) or p >= 1 (zeros), ``(S*B, *F)``; None for 0 < p < 1."""
    if p == 0.0:
        return x if expanded else x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
    if p >= 1.0:
        return torch.zeros((s * b, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return None


def _split(x: Tensor, keys: Tensor) -> tuple[int, int, bool]:
    s, b = keys.shape
    rows = x.shape[0]
    if rows == b:
        return s, b, False
    if rows == s * b:
        return s, b, True
    raise ValueError(
        f"dropout input has {rows} rows, but the Monte Carlo pass has {b} rows x {s} samples: expected {b} "
        f"(before expansion) or {s * b} (after); mcdrop assumes models whose dim 0 is the batch and whose "
        "rows are processed independently"
    )


def mc_dropout(x: Tensor, keys: Tensor, p: float) -> Tensor:
    """Keyed inverted dropout, independent per (sample, row, unit).

    Shape: x ``(B, *F)`` or ``(S*B, *F)``, keys ``(S, B)`` -> ``(S*B, *F)``.
    """
    s, b, expanded = _split(x, keys)
    feat = x.shape[1:]
    edge = _edge_rate(x, p, s, b, expanded)
    if edge is not None:
        return edge
    if triton_masks.enabled(x.device):  # CUDA: masks hashed, compared and applied in one kernel
        return triton_masks.mc_dropout(x, keys, p, expanded)
    n = math.prod(feat)
    _, _, p_used = quantized_rate(p)
    mask = keep_mask(keys, n, p, x.dtype)
    if expanded:
        out = mask.mul_(x.reshape(s, b, n)).mul_(1.0 / (1.0 - p_used))
    else:
        out = mask.mul_((x * (1.0 / (1.0 - p_used))).reshape(1, b, n))
    return out.view(s * b, *feat)


def mc_channel_dropout(x: Tensor, keys: Tensor, p: float) -> Tensor:
    """Keyed channel dropout: one mask value per (sample, row, channel).

    Shape: x ``(B, C, *)`` or ``(S*B, C, *)``, keys ``(S, B)`` -> ``(S*B, C, *)``.
    """
    s, b, expanded = _split(x, keys)
    if x.dim() < 3:
        raise ValueError(f"channel dropout expects input of shape (N, C, *) with 3 or more dims, but got {tuple(x.shape)}")
    feat = x.shape[1:]
    c = feat[0]
    grouped = x.reshape(s if expanded else 1, b, c, -1)
    if p >= 1.0:
        return torch.zeros((s * b, *feat), dtype=x.dtype, device=x.device)
    if p > 0.0 and triton_masks.enabled(x.device):
        return triton_masks.mc_channel_dropout(x, keys, p, expanded)
    _, _, p_used = quantized_rate(p)
    mask = keep_mask(keys, c, p, x.dtype).mul_(1.0 / (1.0 - p_used))
    return (grouped * mask.unsqueeze(-1)).view(s * b, *feat)


SELU_ALPHA = 1.7580993408473766
"""``-lambda * alpha`` of SELU: the value alpha dropout sets dropped units to (before its affine correction)."""


def mc_alpha_dropout(x: Tensor, keys: Tensor, p: float, *, feature: bool = False) -> Tensor:
    """Keyed alpha dropout (torch's ``alpha_dropout``, for SELU networks): dropped units are set to
    ``-alpha'`` (:data:`SELU_ALPHA`) and the result is rescaled to keep zero mean and unit variance,
    ``y = a (x m - alpha' (1 - m)) + a alpha' p`` with ``a = ((alpha'^2 p + 1)(1 - p))^(-1/2)``, ``m`` the keep
    mask; ``feature=True`` draws one mask value per channel (``feature_alpha_dropout``).

    Shape: x ``(B, *F)`` or ``(S*B, *F)`` (``(B, C, *)`` with ``feature``), keys ``(S, B)`` -> ``(S*B, *F)``.
    """
    s, b, expanded = _split(x, keys)
    feat = x.shape[1:]
    edge = _edge_rate(x, p, s, b, expanded)
    if edge is not None:
        return edge
    _, _, p_used = quantized_rate(p)
    a = 1.0 / math.sqrt((SELU_ALPHA**2 * p_used + 1.0) * (1.0 - p_used))
    if feature:
        if x.dim() < 3:
            raise ValueError(f"feature alpha dropout expects input (N, C, *) with 3 or more dims, but got {tuple(x.shape)}")
        mask = keep_mask(keys, feat[0], p, x.dtype).unsqueeze(-1)
        xs = x.reshape(s if expanded else 1, b, feat[0], -1)
    else:
        mask = keep_mask(keys, math.prod(feat), p, x.dtype)
        xs = x.reshape(s if expanded else 1, b, -1)
    out = (xs * mask + SELU_ALPHA * (mask - 1.0)) * a + SELU_ALPHA * a * p_used
    return out.reshape(s * b, *feat)


def _normal(keys: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """Standard normals by Box-Muller from two 32-bit uniforms per word. Shape: ``(S, B, n)``."""
    halves = rng.random_words(keys, n).view(torch.int32).view(*keys.shape, n, 2).double()
    u1 = (halves[..., 0] + 2.0**31 + 0.5) / 2.0**32  # in (0, 1)
    u2 = (halves[..., 1] + 2.0**31) / 2.0**32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)


def mc_gaussian_dropout(x: Tensor, keys: Tensor, p: float) -> Tensor:
    """Keyed multiplicative Gaussian noise ``1 + sqrt(p / (1 - p)) z`` per (sample, row, unit).

    Shape: x ``(B, *F)`` or ``(S*B, *F)``, keys ``(S, B)`` -> ``(S*B, *F)``.
    """
    s, b, expanded = _split(x, keys)
    feat = x.shape[1:]
    n = math.prod(feat)
    noise = _normal(keys, n, x.dtype).mul_(math.sqrt(p / (1.0 - p))).add_(1.0)
    return noise.mul_(x.reshape(s if expanded else 1, b, n)).view(s * b, *feat)


def mc_dropconnect_linear(x: Tensor, keys: Tensor, weight: Tensor, bias: Tensor | None, p: float) -> Tensor:
    """Keyed DropConnect: a separate weight mask ``M ~ Bernoulli(1 - p)`` per (sample, row).

    Shape: x ``(B, in)`` or ``(S*B, in)``, keys ``(S, B)``, weight ``(out, in)`` -> ``(S*B, out)``.
    Memory: ``S * B * out * in`` mask elements; the engine sizes its chunks for it.
    """
    s, b, expanded = _split(x, keys)
    out_f, in_f = weight.shape
    if p >= 1.0:
        y = torch.zeros((s, b, out_f), dtype=x.dtype, device=x.device)
    else:
        _, _, p_used = quantized_rate(p)
        masked = keep_mask(keys, out_f * in_f, p, x.dtype).mul_(weight.reshape(1, 1, -1) / (1.0 - p_used))
        xs = x.reshape(s if expanded else 1, b, in_f, 1).expand(s, b, in_f, 1)
        y = torch.matmul(masked.view(s, b, out_f, in_f), xs).squeeze(-1)
    if bias is not None:
        y = y + bias
    return y.reshape(s * b, out_f)
