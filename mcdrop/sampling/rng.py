"""Counter-based random numbers: every draw is a hash of its coordinates.

The hash is SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA
2014; reference C code by S. Vigna, https://prng.di.unimi.it/splitmix64.c), whose output function is
Stafford's "Mix13" finaliser::

    mix64(z) = z' ^ (z' >> 31),  z' = (z'' ^ (z'' >> 27)) * 0x94d049bb133111eb,
                                 z'' = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9        (mod 2**64)

A dropout mask's words for one (seed, stream, row, sample) are the SplitMix64 sequence started at that
coordinate's key: word ``j`` is ``mix64(key + (j + 1) * 0x9e3779b97f4a7c15)``, and keys are themselves
mixes of the coordinates (:func:`stream_keys`).  A value depends only on (seed, stream, row, sample, j),
never on a generator's position, so the masks a row receives do not depend on how rows and samples are
grouped into batches or chunks.  Integer arithmetic: the same bits on every machine.

Streams separate the dropout layers (module index, call index).  Rows are positions in the caller's
request (< 2**31), samples are Monte Carlo indices (< 2**32).  Tensors hold the 64-bit words as int64
(two's complement, wrapping multiplication); views as int8/int16 assume a little-endian machine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mcdrop.request import MAX_ROW_POSITION, MAX_SAMPLE_INDEX, new_seed

__all__ = ["GOLDEN", "MAX_ROWS", "MAX_SAMPLES", "mix64", "new_seed", "random_words", "seed_key", "seed_keys",
           "splitmix64", "stream_keys"]

_M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # the SplitMix64 increment, 2**64 / golden ratio
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
MAX_ROWS = MAX_ROW_POSITION
MAX_SAMPLES = MAX_SAMPLE_INDEX


def _signed(value: int) -> int:
    value &= _M64
    return value - (1 << 64) if value >= 1 << 63 else value


_C1_S, _C2_S, _GOLDEN_S = _signed(_C1), _signed(_C2), _signed(GOLDEN)


def mix64(value: int) -> int:
    """SplitMix64's output function on a Python int (the reference for :func:`_mix_`)."""
    z = value & _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def splitmix64(seed: int, n: int) -> list[int]:
    """The first ``n`` outputs of SplitMix64 seeded with ``seed``, as in the reference C code."""
    return [mix64(seed + (j + 1) * GOLDEN) for j in range(n)]


def _xorshift_(z: Tensor, shift: int) -> Tensor:
    """``z ^= z >> shift`` with a logical (unsigned) shift, on int64."""
    return z.bitwise_xor_((z >> shift).bitwise_and_((1 << (64 - shift)) - 1))


def _mix_(z: Tensor) -> Tensor:
    """:func:`mix64` applied in place to an int64 tensor (bit-identical)."""
    _xorshift_(z, 30).mul_(_C1_S)
    _xorshift_(z, 27).mul_(_C2_S)
    return _xorshift_(z, 31)


def seed_key(seed: int) -> int:
    """A user seed (any int) as a 64-bit key: the first SplitMix64 output seeded with it."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, but got {seed!r} ({type(seed).__name__})")
    return mix64(seed + GOLDEN)


def seed_keys(seeds: Tensor) -> Tensor:
    """:func:`seed_key` of each int64 seed (bit-identical). Shape: ``(B,)`` -> ``(B,)``."""
    return _mix_(seeds.to(torch.int64) + _GOLDEN_S)


def _stream_word(stream: tuple[int, int]) -> int:
    return mix64((stream[0] + 1) * GOLDEN + stream[1])


def stream_keys(key: int | Tensor, stream: tuple[int, int], rows: Tensor, samples: Tensor) -> Tensor:
    """Per-(sample, row) keys of one stream: ``mix64(mix64((row << 32 | sample) ^ mix64(key ^ s)))`` with
    ``s = mix64((layer + 1) * GOLDEN + call)``.

    Args:
        key: the call's key from :func:`seed_key`, or one key per row from :func:`seed_keys` (``(B,)``).
        stream: (dropout module index, call index within one forward pass).
        rows: int64 row positions. Shape: ``(B,)``.
        samples: int64 sample indices. Shape: ``(S,)``.

    Returns:
        int64 keys. Shape: ``(S, B)``.
    """
    s = _stream_word(stream)
    if isinstance(key, Tensor):
        k = _mix_(key.to(torch.int64) ^ _signed(s)).view(1, -1)
    else:
        k = torch.tensor(_signed(mix64(key ^ s)), dtype=torch.int64, device=rows.device)
    t = (rows.view(1, -1) << 32) | samples.view(-1, 1)
    return _mix_(_mix_(t ^ k))


def random_words(keys: Tensor, n_words: int) -> Tensor:
    """``n_words`` 64-bit words per key: the SplitMix64 sequence started at each key.

    Shape: keys ``(S, B)`` -> ``(S, B, n_words)`` int64.
    """
    j = torch.arange(1, n_words + 1, dtype=torch.int64, device=keys.device).mul_(_GOLDEN_S)
    return _mix_(keys.unsqueeze(-1) + j)
