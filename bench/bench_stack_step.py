"""Seconds per epoch of the stacked UCI trainer, compiled step (``stack.c``) against the torch step (issue 26).

    .venv/bin/python bench/bench_stack_step.py --repeats 5

Shapes of one kin8nm grid chunk by default: G = 240 networks (20 splits x 12 pairs) on N = 5,898 rows of D = 8
inputs, H = 50 hidden units, batch 128, one torch thread.  Each repeat trains ``--epochs`` epochs from the same
seed on each path, alternating the paths; the kernel is built and loaded before timing.  Prints the median over
repeats per path and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mcdrop.training import stack_kernel, uci


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", type=int, default=240)
    ap.add_argument("--rows", type=int, default=5898)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--heteroscedastic", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if stack_kernel.load() is None:
        raise SystemExit("the compiled step did not build (see the log line above)")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, args.rows, args.inputs, generator=g), torch.randn(1, args.rows, generator=g)
    owner = torch.zeros(args.nets, dtype=torch.long)
    p, decay = torch.full((args.nets,), 0.05), torch.full((args.nets,), 1e-4)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for compiled in (True, False):
            start = time.perf_counter()
            uci._train_stack(x, y, owner, p, decay, hidden=args.hidden, epochs=args.epochs, batch_size=128, lr=1e-3,
                             generator=torch.Generator().manual_seed(1), heteroscedastic=args.heteroscedastic,
                             compiled=compiled)
            times[compiled].append((time.perf_counter() - start) / args.epochs)
    fast, slow = statistics.median(times[True]), statistics.median(times[False])
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s): G={args.nets} N={args.rows} "
          f"D={args.inputs} H={args.hidden}{' heteroscedastic' if args.heteroscedastic else ''}, "
          f"median of {args.repeats}: compiled {fast:.3f} s / epoch, torch {slow:.3f} s / epoch, {slow / fast:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
