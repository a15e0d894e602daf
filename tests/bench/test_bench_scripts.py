"""bench/bench_gpu.py, bench_threads.py, bench_csv.py, bench_cnn.py and bench_budget.py run end to end at tiny sizes, so
the scripts a GPU or many-core session runs once cannot rot (their figures are not checked: speed is never asserted
in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_gpu_smoke(tmp_path):
    out = _run("bench/bench_gpu.py", "--smoke", "--rows", "64", "--out", str(tmp_path / "gpu.md"))
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].split(" | ")[:3] == ["| B", "engine fp32", "engine, torch masks" if "cuda" in out else "engine tf32"]
    assert len(table) == 3  # header and B = 1, 8
    assert "images/s" in out and "rows/s" in out and (tmp_path / "gpu.md").read_text().strip() == out.strip()


def test_bench_threads_smoke():
    out = _run("bench/bench_threads.py", "--threads", "1", "--rows", "40", "--batch", "4", "-n", "2", "--repeats", "1",
               "--format", "npy", "csv")
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1 and rows[0].count("|") == 10  # threads, engine (2), two formats x (s, rows/s, ratio)
    assert "fused MLP kernel" in out


def test_bench_csv_smoke():
    out = _run("bench/bench_csv.py", "--rows", "50", "--cols", "5", "--repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith(("| pixels", "| floats"))]
    assert len(rows) == 2 and all(row.count("|") == 7 for row in rows)


def test_bench_cnn_smoke():
    out = _run("bench/bench_cnn.py", "--batches", "1", "-n", "2", "--repeats", "1", "--threads", "1")
    assert len([line for line in out.splitlines() if line.startswith("| 1 |")]) == 1


def test_bench_budget_smoke():
    out = _run("bench/bench_budget.py", "--models", "fashion-mnist", "--powers", "16", "--batch", "2", "-n", "2",
               "--repeats", "1", "--threads", "1")
    assert len([line for line in out.splitlines() if line.startswith("| 2^16 |")]) == 1
