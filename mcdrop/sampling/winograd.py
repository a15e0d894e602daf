"""The fused 3x3 convolution with 2x2 max pooling and ReLU (``winograd.c``), compiled at first use as the MLP's
kernel is (:func:`mcdrop.sampling.kernels.compile_library`); without it callers use torch's convolution.

``relu(maxpool2x2(conv3x3(x, W, padding=1) + b))`` computed tile by tile with Winograd F(2x2, 3x3) (Lavin & Gray
2016): each pooling window is one 2x2 output tile, and ``U = G W G^T`` turns its 36 products per input channel and
output into 16.  The transformed weights are made once per weight version (:func:`pack_weights`, in float64, then
rounded), so a call costs the input transform, ``16 (H/2)(W/2) C O`` multiply-adds and the output transform.

Finite inputs give torch's answer within float32 rounding. The transforms add and subtract neighbouring inputs,
so an infinite input, or finite ones within a factor of a few of float32's largest, can give NaN where a direct
convolution gives an infinity or a large finite number (non-finite either way for an infinite input; mcdrop's
doors refuse non-finite inputs).
"""

from __future__ import annotations

import ctypes
from importlib import resources
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mcdrop.sampling.kernels import GrowingPool, compile_library, load_once, threads_for

__all__ = ["PackedConv", "Winograd", "load", "pack_weights"]

_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


class PackedConv(NamedTuple):
    """A 3x3 convolution's weights for the kernel: ``u`` ``(O / NR, 16, C, NR)`` (``G W G^T``) and ``bias``
    ``(O / NR * NR,)``, outputs padded with zeros to a multiple of the kernel's ``NR``; ``out_channels`` ``O``."""

    u: Tensor
    bias: Tensor
    out_channels: int


def pack_weights(weight: Tensor, bias: Tensor, nr: int) -> PackedConv:
    """``weight`` ``(O, C, 3, 3)`` and ``bias`` ``(O,)`` as the kernel reads them: ``U[a, b] = (G W G^T)[a, b]`` per
    (output, input) channel pair, in blocks of ``nr`` outputs."""
    o, c = weight.shape[:2]
    u = torch.einsum("ak,ockl,bl->abco", _G, weight.detach().double(), _G).reshape(16, c, o).float()
    blocks = -(-o // nr)
    padded, padded_bias = torch.zeros(16, c, blocks * nr), torch.zeros(blocks * nr)
    padded[:, :, :o], padded_bias[:o] = u, bias.detach()
    return PackedConv(padded.view(16, c, blocks, nr).permute(2, 0, 1, 3).contiguous(), padded_bias, o)


class Winograd:
    """The compiled library: :meth:`conv3x3_pool`, on OpenMP threads (torch's) or a thread pool."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
        common: list[Any] = [i64, i64, i64, i64, i64, i32, ptr, ptr, ptr, ptr, ptr, ptr]
        self._run = library.conv3x3_pool
        self._run.argtypes, self._run.restype = [i32, *common], ctypes.c_int
        self._part = library.conv3x3_pool_part
        self._part.argtypes, self._part.restype = [i32, i32, *common], ctypes.c_int
        library.mcdrop_winograd_nr.restype = ctypes.c_int
        self.nr = int(library.mcdrop_winograd_nr())
        self.openmp = bool(library.mcdrop_openmp())
        self._pool = GrowingPool("mcdrop-winograd")

    def conv3x3_pool(self, x: Tensor, packed: PackedConv, *, input_bias: Tensor | None = None,
                     relu_input: bool = False, scale: Tensor | None = None) -> Tensor:
        """``relu(max_pool2d(conv2d(r(x + ib), W, b, padding=1), 2)) * scale[:, :, None, None]`` for float32 CPU
        ``x`` ``(N, C, H, W)``: ``ib`` ``input_bias`` ``(C,)`` (broadcast over the pixels; None: zeros), ``r`` ReLU
        when ``relu_input`` (else the identity), ``scale`` ``(N, O)`` (None: ones). Returned
        ``(N, O, H // 2, W // 2)`` in channels-last memory (``x`` is read channels-last, copied if it is not)."""
        if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu" or min(x.shape[2:]) < 2:
            raise ValueError(f"the fused convolution takes float32 CPU maps (N, C, H, W) of at least 2x2, but got "
                             f"{x.dtype} {tuple(x.shape)} on {x.device}")
        n, c, h, w = x.shape
        o = packed.out_channels
        if packed.u.shape[1:3] != (16, c) or packed.u.dtype != torch.float32 or packed.bias.dtype != torch.float32:
            raise ValueError(f"weights packed for {packed.u.shape[2]} input channels, but the maps have {c}")
        nhwc = x.permute(0, 2, 3, 1).contiguous()
        y = torch.empty((n, h // 2, w // 2, o), dtype=torch.float32)
        if scale is not None:
            scale = scale.contiguous()
            if scale.shape != (n, o) or scale.dtype != torch.float32:
                raise ValueError(f"scale must be float32 {(n, o)}, but got {scale.dtype} {tuple(scale.shape)}")
        if input_bias is not None:
            input_bias = input_bias.contiguous()
            if input_bias.shape != (c,) or input_bias.dtype != torch.float32:
                raise ValueError(f"input_bias must be float32 {(c,)}, but got {input_bias.dtype} "
                                 f"{tuple(input_bias.shape)}")
        args = (n, h, w, c, o, int(relu_input), None if input_bias is None else input_bias.data_ptr(),
                nhwc.data_ptr(), packed.u.data_ptr(), packed.bias.data_ptr(),
                None if scale is None else scale.data_ptr(), y.data_ptr())
        threads = threads_for(n)
        if self.openmp or threads == 1:
            failed = self._run(threads, *args)
        else:
            pool = self._pool.get(threads)
            failed = max(f.result() for f in [pool.submit(self._part, t, threads, *args) for t in range(threads)])
        if failed:
            raise MemoryError("the fused convolution could not allocate its scratch memory")
        return y.permute(0, 3, 1, 2)


def _build() -> Winograd:
    code = resources.files("mcdrop.sampling").joinpath("winograd.c").read_text()
    return Winograd(ctypes.CDLL(str(compile_library(code, "mcdrop-winograd"))))


def load() -> Winograd | None:
    """The compiled kernel, or None (``MCDROP_KERNELS=0``, no compiler, a failed build): logged once."""
    return load_once("winograd", _build, "fused convolution unavailable; the CNN's passes use torch's convolution")
