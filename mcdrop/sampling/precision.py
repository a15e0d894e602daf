"""Arithmetic precision as an explicit setting (``MCDROP_PRECISION``, ``mcdrop score --precision``).

* ``float32`` (default): full float32 everywhere; on CUDA, TF32 is switched off for matrix products and
  convolutions, so answers agree with the CPU within README "Reproducibility"'s float32 tolerances.
* ``tf32`` (CUDA only, Ampere or newer): float32 storage, matrix products and convolutions on TF32 tensor cores
  (10-bit mantissa inputs, float32 accumulation).  Not a CPU setting: refused there.
* ``bfloat16`` (CPU, and CUDA devices that support it): the model's weights and activations in bfloat16 (8-bit
  significand, unit roundoff ``u = 2**-8``); inputs are rounded to bfloat16 on entry and outputs returned as float32,
  so summaries are computed in float32.  The fused MLP kernel is float32-only: bfloat16 takes the generic path.

Masks do not depend on the precision (integer hashes); only the rounding of the network's sums does.  Agreement
with float32 (:func:`output_tolerance`), stated from the unit roundoff, not fitted: each rounding on the path from
input to output changes a value by at most ``u`` relatively; a :class:`~mcdrop.nets.models.DropoutMLP` of ``L``
linear layers rounds ``3 L + 4`` times on its longest path (per layer: the dropout scaling, the weights, the
layer's output; once each: the input, its shift, its scale, the temperature), and to first order the relative
errors add, so outputs agree within ``(3 L + 4) u`` of the row's largest output.  Probabilities move by at most
half the largest logit change (the softmax's Jacobian has infinity norm ``max_k 2 p_k (1 - p_k) <= 1/2``).  For
the shipped classifier (``L = 3``) in bfloat16: ``13 * 2**-8 = 0.051`` relative on logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "UNIT_ROUNDOFF", "apply_precision", "check_precision", "output_tolerance",
           "probability_tolerance", "roundings"]

PRECISIONS = ("float32", "tf32", "bfloat16")

UNIT_ROUNDOFF = {"float32": 2.0**-24, "tf32": 2.0**-11, "bfloat16": 2.0**-8}
"""Relative rounding error of one rounding to nearest: ``2**-p`` for a ``p``-bit significand (24, 11, 8)."""


def check_precision(precision: str | None, device: torch.device) -> str:
    """``precision`` (None: float32) checked against ``device``; ValueError naming what is supported otherwise."""
    name = (precision or "float32").strip().lower()
    if name not in PRECISIONS:
        raise ValueError(f"precision has to be one of {', '.join(PRECISIONS)}, but got {precision!r}")
    if name == "tf32":
        if device.type != "cuda":
            raise ValueError(f"precision 'tf32' needs a CUDA device (TF32 is a GPU tensor-core format); on {device} use "
                             "float32 or bfloat16")
        if torch.cuda.get_device_capability(device) < (8, 0):
            raise ValueError(f"precision 'tf32' needs an Ampere or newer GPU; {torch.cuda.get_device_name(device)} "
                             "has none: use float32")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bfloat16': {torch.cuda.get_device_name(device)} does not support it; use float32")
    return name


def _to_bfloat16(module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(a.to(torch.bfloat16) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def _to_float32(module: nn.Module, args: object, output: object) -> object:
    return output.float() if isinstance(output, Tensor) and output.is_floating_point() else output


def apply_precision(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """Set ``model`` (moved to ``device`` already) and the process's matrix-product flags for ``precision``.

    On CUDA the TF32 flags are process-wide (torch has no per-call switch): a process serves one precision.
    bfloat16 converts the model's floating parameters and buffers in place and hooks its forward so callers
    keep passing and receiving float32.  Returns the model.
    """
    name = check_precision(precision, device)
    if device.type == "cuda":
        tf32 = name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    if name == "bfloat16" and not getattr(model, "_mcdrop_bfloat16", False):
        model.to(torch.bfloat16)
        model.register_forward_pre_hook(_to_bfloat16)
        model.register_forward_hook(_to_float32)
        model._mcdrop_bfloat16 = True  # type: ignore[assignment]
    return model


def roundings(layers: int) -> int:
    """Roundings on the longest path of a DropoutMLP with ``layers`` linear layers (module docstring)."""
    return 3 * layers + 4


def output_tolerance(precision: str, layers: int) -> float:
    """Stated agreement of a DropoutMLP's outputs with float32's, relative to the row's largest output:
    ``roundings(layers) * u``."""
    return roundings(layers) * UNIT_ROUNDOFF[precision]


def probability_tolerance(precision: str, layers: int, largest_logit: float) -> float:
    """Stated agreement of class probabilities (per pass or averaged) with float32's, absolute: half the logit
    bound, ``0.5 * roundings(layers) * u * largest_logit`` (``largest_logit``: the row's largest |logit| after the
    temperature)."""
    return 0.5 * output_tolerance(precision, layers) * largest_logit
