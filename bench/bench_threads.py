"""Thread scaling: the engine on the shipped classifier and `mcdrop score` end to end, at 1, 2, 4, ... threads.

    python bench/bench_threads.py                                   # 1, 2, 4, ... os.cpu_count() threads
    python bench/bench_threads.py --threads 1 2 --rows 10000 --out bench/results/threads-2core.md
    python bench/bench_threads.py --rows 1000000 --format npy csv   # a 16-core server (issue 23's targets)

Engine: `MCEngine(fashion-mnist).sample(x, N)` on `--batch` uniform random rows (the fused kernel when it builds;
`--generic` adds the torch path), median of `--repeats` calls after one warm-up, in rows/s, and the speed-up over
one thread.  Score: `mcdrop score IN -o OUT.npz -n N --seed 0 --threads T -q` on `--rows` rows of uint8 pixels
(uniform random; `.npy`, and `.csv` with `--format csv`), wall seconds including start-up, rows/s, and the ratio to
the engine's rate at the same thread count (issue 23's target: >= 1/1.3 = 0.77).  Prints a markdown table headed by
the CPU, its core count, and how the fused kernel runs (OpenMP or thread pool).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        name = ""
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def default_threads() -> list[int]:
    cores, t, out = os.cpu_count() or 1, 1, []
    while t < cores:
        out.append(t)
        t *= 2
    return [*out, cores]


def engine_rate(threads: int, batch: int, samples: int, repeats: int, fast: bool) -> float:
    """Rows per second of the engine at ``threads`` torch threads (median of ``repeats`` calls)."""
    import torch

    from mcdrop import MCEngine
    from mcdrop.nets.artifacts import load_artifact

    torch.set_num_threads(threads)
    engine = MCEngine(load_artifact("fashion-mnist").model, fast=fast)
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
    engine.sample(x, samples, seed=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.sample(x, samples, seed=0)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def write_input(folder: Path, rows: int, fmt: str) -> Path:
    """``rows`` uniform random uint8 images, as .npy (memory-mapped) or as a CSV of integers with a header."""
    rng = np.random.default_rng(0)
    path = folder / f"in-{rows}.{fmt}"
    if path.exists():
        return path
    if fmt == "npy":
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 784))
        for r in range(0, rows, 65536):
            out[r:r + 65536] = rng.integers(0, 256, size=(min(65536, rows - r), 784), dtype=np.uint8)
        out.flush()
        return path
    with path.open("w") as fh:
        fh.write(",".join(f"p{i}" for i in range(784)) + "\n")
        for r in range(0, rows, 8192):
            block = rng.integers(0, 256, size=(min(8192, rows - r), 784))
            fh.write("\n".join(",".join(map(str, row)) for row in block.tolist()) + "\n")
    return path


def score_seconds(path: Path, threads: int, samples: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "mcdrop.cli.main", "score", str(path), "-o", str(out), "-n", str(samples),
           "--seed", "0", "--threads", str(threads), "-q"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mcdrop score failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default 1, 2, 4, ... cores)")
    parser.add_argument("--batch", type=int, default=1024, help="engine rows per call (1024)")
    parser.add_argument("--samples", "-n", type=int, default=100, help="MC passes N (100)")
    parser.add_argument("--repeats", type=int, default=5, help="engine calls timed per cell (median; 5)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows scored by `mcdrop score` (10,000; 0: skip)")
    parser.add_argument("--format", nargs="+", choices=["npy", "csv"], default=["npy"], help="score input formats")
    parser.add_argument("--generic", action="store_true", help="also time the engine's torch path (fast=False)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)

    from mcdrop.sampling import kernels

    threads = args.threads or default_threads()
    lines = [f"Thread scaling on {cpu_name()}; shipped fashion-mnist, N = {args.samples}, engine batch {args.batch} "
             f"(uniform random rows, median of {args.repeats}); {kernels.describe()}.", ""]
    header = ["threads", "engine rows/s", "speed-up"]
    if args.generic:
        header += ["torch path rows/s", "speed-up"]
    for fmt in args.format if args.rows else []:
        header += [f"score {fmt} {args.rows:,} rows: s", "rows/s", "/ engine"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mcdrop-threads-") as tmp:
        inputs = {fmt: write_input(Path(tmp), args.rows, fmt) for fmt in (args.format if args.rows else [])}
        for t in threads:
            rate = engine_rate(t, args.batch, args.samples, args.repeats, fast=True)
            base.setdefault("fast", rate)
            cells = [str(t), f"{rate:,.0f}", f"{rate / base['fast']:.2f}x"]
            if args.generic:
                generic = engine_rate(t, args.batch, args.samples, args.repeats, fast=False)
                base.setdefault("generic", generic)
                cells += [f"{generic:,.0f}", f"{generic / base['generic']:.2f}x"]
            for path in inputs.values():
                seconds = score_seconds(path, t, args.samples, Path(tmp) / "out.npz")
                cells += [f"{seconds:.1f}", f"{args.rows / seconds:,.0f}", f"{args.rows / seconds / rate:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
