"""The engine's chunk budget on a CPU (issue 23; the default is ``runtime.CPU_ELEMENT_BUDGET``): images per second
of the generic (torch) path for the shipped MLP (its fused kernel switched off) and CNN, MC N = 50, B = 256, at
element budgets 2**19 .. 2**24.  Each point runs in a fresh process with the allocator tuned as the CLI and the
service tune it, so one point's heap does not shape the next; median of ``--repeats`` calls after a warm-up.

    flock /tmp/mcdrop-cpu.lock .venv/bin/python bench/bench_budget.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_POINT = """
import json, statistics, sys, time, torch
from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling import runtime
from mcdrop.sampling.engine import MCEngine
model, budget, batch, samples, repeats, threads = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
runtime.tune_allocator()
engine = MCEngine(load_artifact(model).model, element_budget=budget, fast=False)
x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    engine.sample(x, n_samples=samples, seed=0)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.sample(x, n_samples=samples, seed=0)
        rates.append(batch / (time.perf_counter() - t))
print(json.dumps(statistics.median(rates)))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["fashion-mnist", "fashion-cnn"])
    p.add_argument("--powers", type=int, nargs="+", default=[19, 20, 21, 22, 23, 24])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("-n", "--samples", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(f"generic path, MC N = {args.samples}, B = {args.batch}, {args.threads} threads; images/s\n")
    print("| budget | " + " | ".join(args.models) + " |\n|---|" + "---:|" * len(args.models))
    for power in args.powers:
        cells = []
        for model in args.models:
            out = subprocess.run([sys.executable, "-c", _POINT, model, str(1 << power), str(args.batch),
                                  str(args.samples), str(args.repeats), str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            cells.append(f"{json.loads(out.strip().splitlines()[-1]):,.0f}")
        print(f"| 2^{power} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
