"""The binary wire format: NumPy ``.npy`` bodies in, ``.npz`` answers out.  NumPy only (no torch, no pickle).

Why NumPy's formats rather than Arrow IPC: the client already needs NumPy, the request is one array
``(B, D)`` (exactly what ``.npy`` holds: a short text header and the raw bytes), and both ends decode it
without copying; Arrow would add a 100 MB dependency to the client-only install for no gain on one array.

* Request: ``Content-Type: application/x-npy``, the body an ``.npy`` array of ints or floats ``(B, D)`` (or
  ``(B, h, w)`` images), the request's other fields as query parameters (``/predict?n_samples=50&seed=1``).
* Answer: with ``Accept: application/x-npz``, an uncompressed ``.npz`` holding one array per column of
  :class:`~mcdrop.schemas.PredictResult` (``probabilities.npy``, ``mutual_information.npy``, ...), ``samples``
  if asked for, and ``meta.npy``: a 0-d string array with the JSON of the metadata (model, seed, notes, ...).

Decoding is strict: the header must parse (NumPy's own reader, which evaluates literals only), the dtype must
be numeric and not object, and the body must hold exactly the bytes the header announces; anything else
raises :class:`WireError` naming the problem.  Pickled data is never read (``allow_pickle=False``).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

import numpy as np

from mcdrop.schemas import PredictResult

__all__ = ["NPY", "NPZ", "WireError", "decode_npy", "decode_npz", "encode_npy", "encode_npz"]

NPY = "application/x-npy"
NPZ = "application/x-npz"
_MAX_HEADER = 4096


class WireError(ValueError):
    """A binary body that is not what it claims; the message says what is wrong."""


def encode_npy(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (C order)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(body: bytes) -> np.ndarray:
    """The array in ``.npy`` bytes (a read-only view of ``body``); :class:`WireError` if malformed."""
    buf = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(buf)
    except ValueError as err:
        raise WireError(f"the body is not a .npy array: {err}") from err
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf, max_header_size=_MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf, max_header_size=_MAX_HEADER)
        else:
            raise WireError(f"unsupported .npy format version {version}; expected 1.0, 2.0 or 3.0")
    except (ValueError, SyntaxError, TypeError) as err:
        raise WireError(f"the .npy header cannot be read: {err}") from err
    if dtype.hasobject or dtype.kind not in "iuf":
        raise WireError(f"the .npy array holds {dtype}; expected numbers (int or float, not bool or object)")
    if len(shape) < 2 or any(d < 0 for d in shape):
        raise WireError(f"the .npy array has shape {shape}; expected rows of features, shaped (rows, features)")
    expected = math.prod(shape) * dtype.itemsize
    data = memoryview(body)[buf.tell():]
    if len(data) != expected:
        raise WireError(f"the .npy header announces shape {shape} of {dtype} ({expected} bytes), but the body holds "
                        f"{len(data)} bytes after it")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array


def encode_npz(result: PredictResult) -> bytes:
    """A result as ``.npz`` bytes (stored, not compressed: numbers compress poorly and it costs time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        arrays: dict[str, np.ndarray] = dict(result.columns)
        if result.samples is not None:
            arrays["samples"] = result.samples.astype(np.float32)
        arrays["meta"] = np.array(json.dumps(result.meta()))
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)
    return buf.getvalue()


def decode_npz(body: bytes) -> PredictResult:
    """The result in ``.npz`` bytes (from :func:`encode_npz`); :class:`WireError` if malformed."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise WireError(f"the answer is not a .npz archive: {err}") from err
    try:
        meta: dict[str, Any] = json.loads(str(arrays.pop("meta").item()))
    except (KeyError, ValueError) as err:
        raise WireError("the .npz answer has no readable meta entry") from err
    samples = arrays.pop("samples", None)
    return PredictResult(columns=arrays, samples=samples, **meta)
