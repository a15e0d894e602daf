"""Issue 23's GPU measurements in one call: peaks, the engine against replication and the dense floor, the keyed
masks alone, each precision, the CNN, and `mcdrop score --device cuda` end to end.

    python bench/bench_gpu.py --tests --out bench/results/gpu.md     # on a machine with a CUDA GPU (about 5 min)
    python bench/bench_gpu.py --smoke                                 # tiny sizes, any machine (the test runs this)

Every figure is a median of ``--repeats`` timed calls after two warm-up calls, with the device synchronised around
each call; milliseconds unless named.  Shipped ``fashion-mnist`` (784-1024-1024-10, dropout 0.1/0.3/0.3), uniform
random inputs, N = 100 passes, B = 1, 256, 4096 rows:

* **engine**: ``MCEngine(model).sample(x, N)`` in float32 (keyed masks by the Triton kernel on CUDA), the same with
  ``MCDROP_TRITON=0`` (masks by torch operations), and in tf32 and bfloat16 (:mod:`mcdrop.sampling.precision`);
* **replicate**: the batch repeated N times through the model in train mode (torch's own dropout, no keys);
* **dense floor**: the three matrix products of N * B rows alone, float32 and tf32;
* **masks alone**: the keyed masks of the three dropout layers (``stream_keys`` + ``keep_mask``), Triton and torch.

Then peaks (matrix products of ``--peak-size``, TFLOP/s, fp32 / tf32 / bf16), the CNN (``fashion-cnn``, B = 256,
N = 50, images/s), and ``mcdrop score IN.npy -o OUT.npz -n 100 --device DEVICE`` on ``--rows`` uint8 rows (wall
seconds with start-up, rows/s, and the ratio to the engine's rows/s at B = 4096: issue 23's target is >= 0.7).
``--tests`` first runs the CUDA tests (they skip without a GPU).  Without a GPU everything runs on the CPU
(tf32 cells are "n/a").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcdrop import MCEngine  # noqa: E402
from mcdrop.nets.artifacts import load_artifact  # noqa: E402
from mcdrop.sampling import functional as F  # noqa: E402
from mcdrop.sampling import rng  # noqa: E402
from mcdrop.sampling.precision import apply_precision, check_precision  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    for _ in range(2):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """The process's TF32 flags for ``precision`` inside the block, float32 after it."""
    dummy = torch.nn.Identity()
    apply_precision(dummy, precision, device)
    try:
        yield
    finally:
        apply_precision(dummy, "float32", device)


@contextlib.contextmanager
def triton_off() -> Iterator[None]:
    before = os.environ.get("MCDROP_TRITON")
    os.environ["MCDROP_TRITON"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MCDROP_TRITON"]
        else:
            os.environ["MCDROP_TRITON"] = before


def supported(precision: str, device: torch.device) -> bool:
    try:
        check_precision(precision, device)
    except ValueError:
        return False
    return True


def peaks(device: torch.device, size: int, repeats: int) -> dict[str, float]:
    """TFLOP/s of one ``size`` x ``size`` matrix product per precision."""
    out = {}
    for name, dtype, precision in (("fp32", torch.float32, "float32"), ("tf32", torch.float32, "tf32"),
                                   ("bf16", torch.bfloat16, "float32")):
        if name == "tf32" and not supported("tf32", device):
            continue
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        with matmul_precision(device, precision):
            ms = median_ms(lambda a=a, b=b: a @ b, device, repeats)
        out[name] = 2 * size**3 / (ms * 1e-3) / 1e12
    return out


def table_row(device: torch.device, b: int, n: int, repeats: int) -> dict[str, float | None]:
    model = load_artifact("fashion-mnist").model.to(device)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = torch.rand(b, 784, generator=torch.Generator().manual_seed(0)).to(device)
    cells: dict[str, float | None] = {}
    engine = MCEngine(model)
    cells["engine fp32"] = median_ms(lambda: engine.sample(x, n, seed=0), device, repeats)
    if device.type == "cuda":
        with triton_off():
            torch_masks = MCEngine(model)
            cells["engine, torch masks"] = median_ms(lambda: torch_masks.sample(x, n, seed=0), device, repeats)
    for precision in ("tf32", "bfloat16"):
        if not supported(precision, device):
            cells[f"engine {precision}"] = None
            continue
        if precision == "tf32":
            with matmul_precision(device, "tf32"):
                cells["engine tf32"] = median_ms(lambda: engine.sample(x, n, seed=0), device, repeats)
        else:
            half = apply_precision(load_artifact("fashion-mnist").model.to(device), "bfloat16", device)
            half_engine = MCEngine(half)
            cells["engine bfloat16"] = median_ms(lambda: half_engine.sample(x, n, seed=0), device, repeats)

    def replicate() -> torch.Tensor:
        with torch.no_grad():
            return model(x.repeat(n, 1))

    model.train()
    try:
        cells["replicate"] = median_ms(replicate, device, repeats)
    finally:
        model.eval()
    acts = [torch.rand(n * b, lin.in_features, device=device) for lin in linears]
    weights = [lin.weight.detach().t().contiguous() for lin in linears]

    def floor() -> None:
        for a, w in zip(acts, weights, strict=True):
            a @ w

    cells["floor fp32"] = median_ms(floor, device, repeats)
    if supported("tf32", device):
        with matmul_precision(device, "tf32"):
            cells["floor tf32"] = median_ms(floor, device, repeats)
    else:
        cells["floor tf32"] = None
    dropouts = [(i, m) for i, (_, m) in enumerate(engine.layers)]
    widths = [lin.in_features for lin in linears]
    rows, samples = torch.arange(b, device=device), torch.arange(n, device=device)

    def masks() -> None:
        for (i, m), width in zip(dropouts, widths, strict=True):
            F.keep_mask(rng.stream_keys(rng.seed_key(0), (i, 0), rows, samples), width, m.p)

    cells["masks"] = median_ms(masks, device, repeats)
    if device.type == "cuda":
        with triton_off():
            cells["masks, torch"] = median_ms(masks, device, repeats)
    return cells


def cnn_rate(device: torch.device, b: int, n: int, repeats: int) -> float:
    model = load_artifact("fashion-cnn").model.to(device)
    engine = MCEngine(model)
    x = torch.rand(b, 784, generator=torch.Generator().manual_seed(0)).to(device)
    return b / (median_ms(lambda: engine.sample(x, n, seed=0), device, repeats) / 1e3)


def score_end_to_end(device: torch.device, rows: int, n: int) -> float:
    """Wall seconds of `mcdrop score` on ``rows`` uniform uint8 rows (.npy), start-up included."""
    with tempfile.TemporaryDirectory(prefix="mcdrop-gpu-") as tmp:
        path = Path(tmp) / "in.npy"
        data = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 784))
        gen = np.random.default_rng(0)
        for r in range(0, rows, 65536):
            data[r:r + 65536] = gen.integers(0, 256, size=(min(65536, rows - r), 784), dtype=np.uint8)
        data.flush()
        del data
        cmd = [sys.executable, "-m", "mcdrop.cli.main", "score", str(path), "-o", str(Path(tmp) / "out.npz"), "-n",
               str(n), "--seed", "0", "--device", str(device), "-q", "--batch-size", "4096"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mcdrop score failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} " \
           f"threads, torch {torch.__version__}"


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (B = 1, 8; N = 4; 500 rows): any machine")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 10; smoke 2)")
    parser.add_argument("--rows", type=int, default=None, help="rows for mcdrop score (default 1,000,000; smoke 500)")
    parser.add_argument("--peak-size", type=int, default=None, help="matrix size for the peaks (8192; smoke 128)")
    parser.add_argument("--tests", action="store_true", help="first run the CUDA tests (pytest; they skip without a GPU)")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    smoke = args.smoke
    batches, n = ((1, 8), 4) if smoke else ((1, 256, 4096), 100)
    repeats = args.repeats or (2 if smoke else 10)
    rows = args.rows if args.rows is not None else (500 if smoke else 1_000_000)
    lines = [f"# mcdrop on {describe(device)}", ""]
    if args.tests:
        tests = ["tests/sampling/test_triton_masks.py", "tests/sampling/test_precision.py", "tests/sampling/test_runtime.py"]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, capture_output=True, text=True)
        lines += ["CUDA tests: " + (proc.stdout.strip().splitlines() or ["(no output)"])[-1], ""]
        print(proc.stdout[-3000:], proc.stderr[-2000:], file=sys.stderr)
    peak = peaks(device, args.peak_size or (128 if smoke else 8192), repeats)
    lines += ["Peaks (TFLOP/s): " + ", ".join(f"{k} {v:.3g}" for k, v in peak.items()), ""]
    rows_out = {b: table_row(device, b, n, repeats) for b in batches}
    columns = list(next(iter(rows_out.values())))
    lines += [f"Shipped fashion-mnist, N = {n}, milliseconds (median of {repeats}):", "",
              "| B | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(columns)]
    lines += [f"| {b} | " + " | ".join(fmt(cells.get(c)) for c in columns) + " |" for b, cells in rows_out.items()]
    big = max(batches)
    engine_rows = big / (rows_out[big]["engine fp32"] / 1e3)  # type: ignore[operator]
    lines += ["", f"Engine at B = {big}: {engine_rows:,.0f} rows/s; vs replicate "
              f"{rows_out[big]['replicate'] / rows_out[big]['engine fp32']:.2f}x faster, vs fp32 floor "  # type: ignore[operator]
              f"{rows_out[big]['engine fp32'] / rows_out[big]['floor fp32']:.2f}x the floor; B = 1: "  # type: ignore[operator]
              f"{rows_out[min(batches)]['engine fp32']:.2f} ms (targets: >= 2x, <= 1.2x, < 0.5 ms)."]
    cnn_b, cnn_n = (8, 4) if smoke else (256, 50)
    lines += [f"CNN (fashion-cnn), B = {cnn_b}, N = {cnn_n}: {cnn_rate(device, cnn_b, cnn_n, repeats):,.0f} images/s."]
    if rows:
        seconds = score_end_to_end(device, rows, n)
        lines += [f"`mcdrop score --device {device} -n {n}` on {rows:,} rows (.npy): {seconds:.1f} s, "
                  f"{rows / seconds:,.0f} rows/s = {rows / seconds / engine_rows:.2f} x the engine's rate "
                  "(target >= 0.7)."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
