"""Shared test helpers: tolerances come from sampling distributions, not guesses."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
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



@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """``cli("score", "x.csv", ...)`` runs ``mcdrop`` in-process and returns its exit code and output."""

    from mcdrop.cli.main import main

    def run(*args: object) -> Run:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's own usage errors and --help
            code = int(exit_.code or 0)
        out = capsys.readouterr()
        return Run(code, out.out, out.err)

    return run


_PER_CALL_THREADS = ("mcdrop-scheduler", "mcdrop-reader")
"""Threads a test's objects start and must stop (process-wide pools such as ``mcdrop-parse`` live on)."""


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_threads():
    """A scheduler's worker or a CLI reader started by a module's tests has stopped when the module ends (its
    fixtures closed what they made)."""
    import threading

    before = set(threading.enumerate())
    yield
    left = [t.name for t in set(threading.enumerate()) - before if t.name.startswith(_PER_CALL_THREADS) and t.is_alive()]
    assert not left, f"threads left running: {left}; close the Scheduler (or whatever started them) in the test"
