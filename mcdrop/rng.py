"""Counter-based random numbers: every draw is a hash of its coordinates.

A draw is ``mix(key(seed, stream, row, sample) + (j + 1) * GOLDEN)``, where ``mix`` is a 64-bit
bijective mixer (xor-shift 32, multiply, xor-shift 32, multiply, xor-shift 32).  Because a value
depends only on (seed, stream, row, sample, j) and never on a generator's position, the masks a row
receives do not depend on how rows and samples are grouped into batches or chunks: this is what makes
seeded Monte Carlo results independent of batch composition and chunk size.

Streams separate the dropout layers (module index, call index).  Rows are positions in the caller's
request (< 2**31), samples are Monte Carlo indices (< 2**32).  The 64-bit arithmetic wraps, as
torch's int64 kernels do; views as int8/int16/int32 assume a little-endian machine.
"""

from __future__ import annotations

import secrets

import torch
from torch import Tensor

__all__ = ["MAX_ROWS", "MAX_SAMPLES", "mix_int", "new_seed", "random_words", "seed_key", "seed_keys", "stream_keys"]

_M64 = (1 << 64) - 1
_MUL = 0xD6E8FEB86659FD93
_GOLDEN = 0x9E3779B97F4A7C15
MAX_ROWS = 1 << 31
MAX_SAMPLES = 1 << 32


def _signed(value: int) -> int:
    value &= _M64
    return value - (1 << 64) if value >= 1 << 63 else value


_MUL_S = _signed(_MUL)
_GOLDEN_S = _signed(_GOLDEN)


def mix_int(value: int) -> int:
    """The 64-bit mixer on a Python int (bit-identical to :func:`_mix_`)."""
    x = value & _M64
    x ^= x >> 32
    x = (x * _MUL) & _M64
    x ^= x >> 32
    x = (x * _MUL) & _M64
    x ^= x >> 32
    return x


def _xorshift32_(x: Tensor) -> None:
    halves = x.view(torch.int32).view(*x.shape, 2)  # [..., 0] low word, [..., 1] high word
    halves[..., 0] ^= halves[..., 1]


def _mix_(x: Tensor) -> Tensor:
    """The 64-bit mixer applied in place to a contiguous int64 tensor."""
    _xorshift32_(x)
    x.mul_(_MUL_S)
    _xorshift32_(x)
    x.mul_(_MUL_S)
    _xorshift32_(x)
    return x


def new_seed() -> int:
    """A fresh 63-bit seed from the operating system (for unseeded calls)."""
    return secrets.randbits(63)


def seed_key(seed: int) -> int:
    """Mix a user seed (any int) into a 64-bit key."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, but got {seed!r} ({type(seed).__name__})")
    return mix_int(mix_int(seed & _M64) ^ _GOLDEN)


def seed_keys(seeds: Tensor) -> Tensor:
    """:func:`seed_key` of each int64 seed (bit-identical). Shape: ``(B,)`` -> ``(B,)``."""
    return _mix_(_mix_(seeds.to(torch.int64).clone()) ^ _GOLDEN_S)


def stream_keys(key: int | Tensor, stream: tuple[int, int], rows: Tensor, samples: Tensor) -> Tensor:
    """Per-(sample, row) keys of one stream: ``mix(mix((row << 32 | sample) ^ mix(key ^ mix(stream))))``.

    Args:
        key: the call's key from :func:`seed_key`, or one key per row from :func:`seed_keys` (``(B,)``).
        stream: (dropout module index, call index within one forward pass).
        rows: int64 row positions. Shape: ``(B,)``.
        samples: int64 sample indices. Shape: ``(S,)``.

    Returns:
        int64 keys. Shape: ``(S, B)``.
    """
    s = mix_int((stream[0] + 1) * _GOLDEN + stream[1])
    if isinstance(key, Tensor):
        k = _mix_(key.to(torch.int64) ^ _signed(s)).view(1, -1)
    else:
        k = torch.tensor(_signed(mix_int(key ^ s)), dtype=torch.int64, device=rows.device)
    t = (rows.view(1, -1) << 32) | samples.view(-1, 1)
    return _mix_(_mix_(t ^ k))


def random_words(keys: Tensor, n_words: int) -> Tensor:
    """``n_words`` independent 64-bit words per key.

    Shape: keys ``(S, B)`` -> ``(S, B, n_words)`` int64.
    """
    j = torch.arange(1, n_words + 1, dtype=torch.int64, device=keys.device).mul_(_GOLDEN_S)
    return _mix_(keys.unsqueeze(-1) + j)
