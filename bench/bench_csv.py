"""CSV reading for bulk scoring (issue 23): ``open_input`` over every chunk, with Arrow's blocks (the default)
and with the csv module alone (Arrow switched off), on one generated file; median of ``--repeats``.

    flock /tmp/mcdrop-cpu.lock .venv/bin/python bench/bench_csv.py --rows 10000 --cols 784
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

import mcdrop.io.readers as readers


def _write(path: Path, rows: int, cols: int, kind: str) -> None:
    rng = np.random.default_rng(0)
    with path.open("w") as fh:
        fh.write(",".join(f"p{i}" for i in range(cols)) + "\n")
        for start in range(0, rows, 1000):
            n = min(1000, rows - start)
            if kind == "pixels":
                np.savetxt(fh, rng.integers(0, 256, (n, cols)), fmt="%d", delimiter=",")
            else:
                np.savetxt(fh, rng.random((n, cols), dtype=np.float32), fmt="%.9g", delimiter=",")


def _seconds(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        source = readers.open_input(path, chunk_rows=1024)
        n = sum(len(c.x) for c in source.chunks)
        times.append(time.perf_counter() - t)
    assert n > 0
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--cols", type=int, default=784)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print("| cells | MB | csv module s | Arrow blocks s | speed-up | Arrow rows/s |\n|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("pixels", "floats"):
            path = Path(tmp) / f"{kind}.csv"
            _write(path, args.rows, args.cols, kind)
            with mock.patch.object(readers, "_arrow_block", lambda *a: None):
                slow = _seconds(path, args.repeats)
            fast = _seconds(path, args.repeats)
            print(f"| {kind} | {path.stat().st_size / 1e6:.1f} | {slow:.2f} | {fast:.2f} | {slow / fast:.1f}x "
                  f"| {args.rows / fast:,.0f} |")


if __name__ == "__main__":
    main()
