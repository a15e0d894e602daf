"""Throughput and peak memory of `mcdrop score`, in-process and through a local server.

    python bench/bench_score.py [--rows 10000 100000 500000] [--remote-rows 10000 100000] [--mode deterministic]

Generates .npy files of uint8 images (N x 784; written through a memory map, never committed) in a
temporary folder, scores each with `mcdrop score IN.npy -o OUT.csv --quiet` under /usr/bin/time, and
reports wall seconds, rows/s and the scoring process's peak RSS (for --url runs: the CLI's; the server's
is its own).  Peak RSS should not grow with the number of rows: input, scoring and output are chunked.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_input(path: Path, rows: int, seed: int = 0) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 784))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        out[start : start + n] = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
    out.flush()
    del out


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one command, from GNU time."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *args], capture_output=True, text=True,
                          env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    wall, kib = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    parser.add_argument("--remote-rows", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--mode", choices=["deterministic", "mc"], default="deterministic")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    mcdrop = str(Path(sys.executable).with_name("mcdrop"))
    common = ["--mode", args.mode, "--samples", str(args.samples), "--seed", "0", "--quiet",
              "--batch-size", str(args.batch_size)]
    results = []
    with tempfile.TemporaryDirectory(prefix="mcdrop-bench-score-") as tmp:
        folder = Path(tmp)
        for rows in sorted(set(args.rows) | set(args.remote_rows)):
            make_input(folder / f"in-{rows}.npy", rows)
        for rows in args.rows:
            wall, rss = timed([mcdrop, "score", str(folder / f"in-{rows}.npy"), "-o", str(folder / "out.csv"),
                               "--threads", str(args.threads), *common])
            results.append(("local", rows, wall, rss))
            print(f"local {rows}: {wall:.1f} s, {rows / wall:,.0f} rows/s, peak RSS {rss:.0f} MiB", flush=True)
        if args.remote_rows:
            from tests.server import running_server

            with running_server({"MCDROP_THREADS": str(args.threads)}) as url:
                for rows in args.remote_rows:
                    wall, rss = timed([mcdrop, "score", str(folder / f"in-{rows}.npy"), "-o", str(folder / "out.csv"),
                                       "--url", url, *common])
                    results.append(("remote", rows, wall, rss))
                    print(f"remote {rows}: {wall:.1f} s, {rows / wall:,.0f} rows/s, peak RSS {rss:.0f} MiB", flush=True)
    mode = args.mode + (f" N={args.samples}" if args.mode == "mc" else "")
    print(f"\nmcdrop score, {mode}, 784 uint8 features per row, CSV output, --batch-size {args.batch_size}")
    print("| where | rows | seconds | rows/s | peak RSS (MiB) |\n|---|---:|---:|---:|---:|")
    for where, rows, wall, rss in results:
        print(f"| {where} | {rows:,} | {wall:.1f} | {rows / wall:,.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
