"""What every door does to inputs before a model sees them, in one NumPy-only place.

* uint8 arrays are 8-bit pixels: :func:`to_model_range` divides them by 255 (the models take pixels in
  [0, 1]); other dtypes pass unchanged.  The CLI (``--scale auto``), the service's ``.npy`` decoder
  (:func:`mcdrop.wire.decode_npy`) and the client (NumPy arrays) all call it, so a uint8 file, body or array
  gets the same answer as the same images as floats divided by 255.
* :func:`range_note` says when inputs look like 0–255 pixels sent as numbers (a CSV, JSON, float arrays) to a
  model whose card says its inputs lie in [0, 1] (``input_range``): such rows are far outside what the model
  saw, so every one of them abstains with a huge OOD score, and nothing else would say why.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["PIXEL_MAX", "input_range", "range_note", "scale_for", "to_model_range"]

PIXEL_MAX = 255
"""The largest 8-bit pixel value: uint8 inputs are divided by it."""


def scale_for(dtype: Any) -> float:
    """The factor inputs of ``dtype`` are multiplied by: ``1 / 255`` for uint8 (pixels), else 1."""
    return 1.0 / PIXEL_MAX if np.dtype(dtype) == np.uint8 else 1.0


def to_model_range(array: np.ndarray) -> np.ndarray:
    """``array`` with uint8 pixels divided by 255 (as float32); any other dtype is returned unchanged."""
    if array.dtype != np.uint8:
        return array
    return array.astype(np.float32) * np.float32(scale_for(np.uint8))


_STATED = re.compile(r"\[\s*0(?:\.0*)?\s*,\s*1(?:\.0*)?\s*\]")


def input_range(card: Any) -> tuple[float, float] | None:
    """The range a model expects its inputs in: the card's ``input_range``, else ``(0, 1)`` when its
    ``normalisation`` text says "[0, 1]" (cards written before the field existed), else None (not stated)."""
    stated = getattr(card, "input_range", None)
    if stated is not None:
        low, high = stated
        return float(low), float(high)
    if _STATED.search(str(getattr(card, "normalisation", "") or "")):
        return 0.0, 1.0
    return None


def range_note(x: np.ndarray, card: Any) -> str | None:
    """A one-line note when the rows ``x`` look like 0–255 pixels (every value in [0, 255], the largest above
    twice the top of the range) for a model whose card says its inputs lie in [0, 1]; None otherwise."""
    expected = input_range(card)
    if expected is None or expected[1] > 1.0 or x.size == 0:
        return None
    high = float(np.max(x))  # scaled data fails here, after one pass over x
    if not 2.0 * expected[1] < high <= PIXEL_MAX or float(np.min(x)) < 0.0:
        return None
    return (f"inputs look like 0-255 pixels (values up to {high:g}), but model {getattr(card, 'name', '?')!r} expects "
            f"inputs in [{expected[0]:g}, {expected[1]:g}]: divide them by 255 (or send uint8, which is divided for you); "
            "as they are, the answers are meaningless (huge ood_score, every row abstains)")
