"""The Triton kernel of :mod:`mcdrop.sampling.triton_masks` (imported at first use: ``@triton.jit`` reads
``TRITON_INTERPRET`` when this module is imported)."""

import triton
import triton.language as tl

__all__ = ["masked_scale"]


@triton.jit
def _mix64(z):
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _bfloat16_rne(y):
    """float32 -> bfloat16 rounded to nearest even, in integer arithmetic (torch's rounding; Triton's
    interpreter truncates in its own cast, so the bits are spelled out here and agree on every backend)."""
    bits = y.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    bits = tl.where(y != y, 0x7FC0, bits)  # NaN stays NaN
    return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def masked_scale(x_ptr, keys_ptr, out_ptr, n_elem, batch, scale,
                 INNER: tl.constexpr, BITS: tl.constexpr, THRESHOLD: tl.constexpr, EXPANDED: tl.constexpr,
                 HAS_X: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    q = tl.program_id(0).to(tl.int64)  # pair (sample-major: q = sample * batch + row)
    e = tl.program_id(1).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    inside = e < n_elem
    unit = e
    if INNER > 1:
        unit = e // INNER
    lanes_per_word: tl.constexpr = 64 // BITS
    key = tl.load(keys_ptr + q).to(tl.uint64, bitcast=True)
    word_index = (unit // lanes_per_word + 1).to(tl.uint64)
    word = _mix64(key + word_index * 0x9E3779B97F4A7C15)
    lane = (word >> ((unit % lanes_per_word) * BITS).to(tl.uint64)) & ((1 << BITS) - 1)
    keep = (lane ^ (1 << (BITS - 1))) >= THRESHOLD
    if HAS_X:
        row = q if EXPANDED else q % batch
        x = tl.load(x_ptr + row * n_elem + e, mask=inside, other=0.0)
        y = x.to(tl.float32) * scale * keep.to(tl.float32)  # x * scale rounded once, as torch's opmath does
        if x.dtype == tl.bfloat16:
            y = _bfloat16_rne(y)
        elif x.dtype != tl.float32:
            y = y.to(x.dtype)
    else:
        y = keep.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + q * n_elem + e, y, mask=inside)

