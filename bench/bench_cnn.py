"""The CNN's MC passes on a CPU (issue 23, item 5): ``fashion-cnn`` through the engine four ways, alternated
``--repeats`` times, the allocator tuned as the CLI and the service tune it; medians in images per second:
the generic path with the convolution weights in the plain layout (the engine as issue 23 measured it), the
generic path channels-last (as the model loads), the fast path (:mod:`mcdrop.nets.cnn_plan`: the convolution
after the first channel dropout mixed per pass from per-channel maps, BatchNorms folded) with torch's
convolutions (the fused kernel switched off while that engine folds its weights, as where no C compiler is), and
the fast path with the fused Winograd convolution (:mod:`mcdrop.sampling.winograd`).  Also the largest
difference between the fused and generic outputs, relative to the row's largest logit.

    flock /tmp/mcdrop-cpu.lock .venv/bin/python bench/bench_cnn.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Iterator

import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling import runtime, winograd
from mcdrop.sampling.engine import MCEngine


@contextlib.contextmanager
def _without_fused_convolution() -> Iterator[None]:
    """The CNN plan folds its weights as if the fused kernel had not been built."""
    real = winograd.load
    winograd.load = lambda: None
    try:
        yield
    finally:
        winograd.load = real


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="fashion-cnn")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("-n", "--samples", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runtime.tune_allocator()  # as the CLI and the service do
    fast = load_artifact(args.model).model
    plain = load_artifact(args.model).model.to(memory_format=torch.contiguous_format)
    engines = {"plain": MCEngine(plain, fast=False), "channels-last": MCEngine(fast, fast=False),
               "torch convolutions": MCEngine(load_artifact(args.model).model), "fused": MCEngine(fast)}
    print(f"{args.model}, MC N = {args.samples}, {_cpu()}, {args.threads} threads; images/s, median of "
          f"{args.repeats} alternated runs\n")
    print("| B | generic, plain | generic, channels-last | fast path, torch convolutions | fast path, fused | "
          "fused / plain | fused / channels-last | max rel. diff |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for b in args.batches:
            x = torch.rand(b, fast.in_features, generator=gen)
            rates: dict[str, list[float]] = {k: [] for k in engines}
            with _without_fused_convolution():  # its first call folds the weights
                engines["torch convolutions"].sample(x, n_samples=args.samples, seed=0)
            warm = {name: e.sample(x, n_samples=args.samples, seed=0) for name, e in engines.items()}
            want, got = warm["channels-last"], warm["fused"]
            diff = float(((got - want).abs() / want.abs().amax(-1, keepdim=True).clamp_min(1e-6)).max())
            for _ in range(args.repeats):
                for name, e in engines.items():
                    t = time.perf_counter()
                    e.sample(x, n_samples=args.samples, seed=0)
                    rates[name].append(b / (time.perf_counter() - t))
            med = {name: statistics.median(r) for name, r in rates.items()}
            print(f"| {b} | {med['plain']:,.0f} | {med['channels-last']:,.0f} | {med['torch convolutions']:,.0f} | "
                  f"{med['fused']:,.0f} | {med['fused'] / med['plain']:.2f}x | "
                  f"{med['fused'] / med['channels-last']:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
