"""The compiled gradient step of the stacked UCI networks (``stack.c``), built at first use like the MC kernel.

:func:`load` compiles ``stack.c`` with :func:`mcdrop.sampling.kernels.compile_library` (the same compiler, flags,
cache and ``MCDROP_KERNELS=0`` switch) and returns None, after one log line, where that fails; the trainer then
takes its torch path.  :meth:`StackKernel.grad` writes every network's gradients for one minibatch from the same
random words the torch path draws, so both paths train on the same masks and batches.
"""

from __future__ import annotations

import ctypes
from importlib import resources

import torch
from torch import Tensor

from mcdrop.sampling.kernels import compile_library, load_once

__all__ = ["StackKernel", "load"]


def _ptr(t: Tensor) -> int:
    if not t.is_contiguous():
        raise ValueError("stack kernel arguments have to be contiguous")
    return t.data_ptr()


class StackKernel:
    """``stack_grad`` of ``stack.c``: the gradients of G one-hidden-layer dropout networks for one minibatch."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
        self._grad = library.stack_grad
        self._grad.argtypes = [i32, i64, i64, i64, i64, i64, i64, ctypes.c_float, *[ptr] * 17]
        self._grad.restype = None
        self.openmp = bool(library.stack_openmp())

    def grad(self, x: Tensor, y: Tensor, owner: Tensor, idx: Tensor, words_in: Tensor, words_hidden: Tensor,
             threshold: Tensor, scale: Tensor, decay: Tensor, params: tuple[Tensor, Tensor, Tensor, Tensor],
             grads: tuple[Tensor, Tensor, Tensor, Tensor], beta: float = 0.0) -> None:
        """Write ``dL_g / d(W1, b1, W2, b2)`` into ``grads`` (``stack.c`` states the loss).

        Shapes: x ``(K, N, D)``, y ``(K, N)`` float32; owner ``(G,)``, idx ``(G, B)`` int64; words_in and words_hidden
        int64 random words holding ``G B D`` and ``G B H`` 16-bit lanes (three per word); threshold ``(G,)`` int16;
        scale, decay ``(G,)`` float32; params and grads ``W1 (G, D, H)``, ``b1 (G, 1, H)``, ``W2 (G, H, O)``,
        ``b2 (G, 1, O)`` float32, O = 1 or 2 (heteroscedastic); beta: the beta-NLL weight (heteroscedastic).
        """
        w1, b1, w2, b2 = params
        nets, batch = idx.shape
        _, n_rows, d = x.shape
        hidden, n_out = w2.shape[1], w2.shape[2]
        threads = torch.get_num_threads() if self.openmp else 1
        self._grad(threads, nets, batch, n_rows, d, hidden, n_out, beta, _ptr(x), _ptr(y), _ptr(owner), _ptr(idx),
                   _ptr(words_in), _ptr(words_hidden), _ptr(threshold), _ptr(scale), _ptr(decay),
                   _ptr(w1), _ptr(b1), _ptr(w2), _ptr(b2), *(_ptr(g) for g in grads))


def _build() -> StackKernel:
    code = resources.files("mcdrop.training").joinpath("stack.c").read_text()
    return StackKernel(ctypes.CDLL(str(compile_library(code, "mcdrop-stack"))))


def load() -> StackKernel | None:
    """The compiled step, or None (``MCDROP_KERNELS=0``, no compiler, a failed build): logged once."""
    return load_once("stack", _build, "compiled training step unavailable; training with torch operations")
