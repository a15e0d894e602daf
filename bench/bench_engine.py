"""Engine benchmark: MC dropout on the reference MLP (784-256-256-10, dropout 0.2/0.5), CPU.

    python bench/bench_engine.py [--threads 2] [--repeats 15] [--out results.md]

Methods, all with the same weights, timing the samples (S, B, 10) only:
  (a) loop:       N forward passes of the batch with torch's nn.Dropout in training mode;
  (b) replicate:  the batch repeated N times, one training-mode forward (torch-uncertainty's
                  ``mc_dropout(on_batch=True)`` approach, reproduced);
  (c) mcdrop:     MCEngine.sample (keyed masks, prefix computed once);
  (d) floor:      the linear layers the engine cannot avoid: 784->256 on B rows, then 256->256 and
                  256->10 on N*B rows.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mcdrop import DropoutMLP, MCEngine
from mcdrop.core.runtime import tune_allocator


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256, 1024])
    parser.add_argument("--samples", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = tune_allocator()
    torch.manual_seed(0)

    ours = DropoutMLP(784, [256, 256], 10, dropout=[0.2, 0.5]).eval()
    lin = [m for m in ours.modules() if isinstance(m, nn.Linear)]
    plain = nn.Sequential(lin[0], nn.ReLU(), nn.Dropout(0.2), lin[1], nn.ReLU(), nn.Dropout(0.5), lin[2]).train()
    engine = MCEngine(ours)
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.detach(), m.bias.detach()) for m in lin]

    header = (
        f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"allocator tuned: {tuned}; median of {args.repeats} runs, milliseconds"
    )
    rows = [
        "| B | N | (a) loop | (b) replicate | (c) mcdrop | (d) floor | (b)/(c) | (c)/(d) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with torch.inference_mode():
        for b in args.batches:
            x = torch.rand(b, 784)
            for n in args.samples:
                hidden = torch.rand(n * b, 256)
                t_loop = median_ms(lambda: torch.stack([plain(x) for _ in range(n)]), args.repeats)
                t_rep = median_ms(lambda: plain(x.repeat(n, 1)).view(n, b, 10), args.repeats)
                t_ours = median_ms(lambda: engine.sample(x, n, seed=0), args.repeats)
                t_floor = median_ms(
                    lambda: (nn.functional.linear(x, w1, b1), nn.functional.linear(nn.functional.linear(hidden, w2, b2), w3, b3)),
                    args.repeats,
                )
                rows.append(
                    f"| {b} | {n} | {t_loop:.2f} | {t_rep:.2f} | {t_ours:.2f} | {t_floor:.2f} "
                    f"| {t_rep / t_ours:.2f}x | {t_ours / t_floor:.2f}x |"
                )
                print(rows[-1], flush=True)
    table = "\n".join([header, "", *rows])
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
