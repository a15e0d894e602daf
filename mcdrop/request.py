"""The request's vocabulary and defaults, in one torch-free place.

The schema (:mod:`mcdrop.schemas`), the client, the CLI, the predictor and the engine all take their modes,
tasks, defaults and limits from here.  A missing seed is drawn at the request's door, once, by
:func:`mcdrop.plan.with_seed` (which calls :func:`new_seed`).
"""

from __future__ import annotations

import secrets
from enum import StrEnum

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_N_SAMPLES",
    "FLOAT32_MAX",
    "MAX_ROW_POSITION",
    "MAX_SAMPLE_INDEX",
    "MAX_SEED",
    "MIN_ADAPTIVE_SAMPLES",
    "Mode",
    "Task",
    "new_seed",
]


class Mode(StrEnum):
    """How a model is run."""

    DETERMINISTIC = "deterministic"
    """Dropout off: exactly the ``model.eval()`` forward."""
    MC = "mc"
    """Dropout on: ``n_samples`` stochastic forward passes."""


class Task(StrEnum):
    """What a model predicts (its output head)."""

    CLASSIFICATION = "classification"
    """Logits over classes."""
    HOMOSCEDASTIC = "homoscedastic"
    """A regression mean; constant noise variance ``1 / tau``."""
    HETEROSCEDASTIC = "heteroscedastic"
    """A regression mean and a per-input log-variance."""


DEFAULT_N_SAMPLES = 50
"""MC passes when a request names none."""
DEFAULT_LEVEL = 0.95
"""Central prediction-interval level (regression)."""
DEFAULT_MAX_SAMPLES = 2000
"""A server's cap on MC passes per row, also the cap of adaptive sampling when a request names none."""
MIN_ADAPTIVE_SAMPLES = 8
"""Adaptive sampling draws at least this many passes before it may stop: the MC standard error estimated
from ``n`` passes has a relative standard deviation of about ``1 / sqrt(2 (n - 1))`` (38% at 8 passes, 100%
at 1), so fewer passes cannot tell whether the tolerance is met."""
DEFAULT_MAX_ROWS = 1024
"""Rows per request a server accepts."""
DEFAULT_MAX_BODY_BYTES = 16 << 20
"""Request body size a server accepts."""
MAX_ROW_POSITION = 1 << 31
"""Row positions (``row_offset`` + index) are below this."""
MAX_SAMPLE_INDEX = 1 << 32
"""Sample indices are below this."""
MAX_SEED = 1 << 63
"""Seeds are in ``[0, MAX_SEED)``."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: inputs beyond it cannot be represented by the models."""


def new_seed() -> int:
    """A fresh seed from the operating system, for a request that names none (63 bits)."""
    return secrets.randbits(63)
