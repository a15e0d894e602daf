"""Shared test helpers: tolerances come from sampling distributions, not guesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from scipy import stats

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

# MCDROP_TEST_THREADS=N runs the whole suite with N torch threads: this process, and the servers and CLI
# subprocesses it starts (through MCDROP_THREADS).  No test may depend on the thread count.
if os.environ.get("MCDROP_TEST_THREADS"):
    import torch

    torch.set_num_threads(int(os.environ["MCDROP_TEST_THREADS"]))
    os.environ["MCDROP_THREADS"] = os.environ["MCDROP_TEST_THREADS"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MCDROP_DATA", ROOT.parent / "shared" / "data"))

# Every statistical test uses this two-sided false-alarm rate per assertion.
ALPHA = 1e-4


def z_bound(alpha: float = ALPHA) -> float:
    """Two-sided standard normal quantile: |Z| exceeds it with probability alpha."""
    return float(stats.norm.ppf(1 - alpha / 2))


def needs_data(*parts: str) -> pytest.MarkDecorator:
    """Skip unless ../shared/data (or $MCDROP_DATA) holds the given path."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"needs the development data at {path} (see ../shared/data)")
