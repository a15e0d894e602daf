"""Imported models (issue 20): the cost of running a network from its stored graph instead of the original module.

    python bench/bench_import.py [--threads 2] [--repeats 15]

For each network, time of ``MCEngine.sample(x, N=50)`` on B = 256 rows, the original module vs the model folder
written by ``mcdrop.export_model`` and loaded back (same samples, checked):

* a plain MLP 64-512-512-10 (nn.Sequential of Linear/ReLU/Dropout 0.5): the original takes the generic torch path,
  the import is stored as a DropoutMLP and sampled by the fused kernel;
* a residual MLP (two residual blocks with LayerNorm and GELU, width 256, dropout inside, F.dropout before the head):
  the original with ``functional_dropout=True``, the import run by ImportedNet's graph interpreter;
* a CNN (2 conv blocks with BatchNorm and Dropout2d, dense head) on 1x28x28 inputs: interpreter vs module.

Medians over ``--repeats`` interleaved runs after one warm-up; the ratio is imported / original.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.fc, self.drop = nn.LayerNorm(width), nn.Linear(width, width), nn.Dropout(0.2)

    def forward(self, x):
        return x + self.drop(F.gelu(self.fc(self.norm(x))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.blocks, self.out = nn.Linear(64, 256), nn.Sequential(Block(256), Block(256)), nn.Linear(256, 10)

    def forward(self, x):
        return self.out(F.dropout(self.blocks(torch.relu(self.inp(x))), 0.2, self.training))


def networks() -> list[tuple[str, nn.Module, torch.Tensor, bool]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(512, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout2d(0.1),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout2d(0.2),
                        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    return [("plain MLP 64-512-512-10", mlp.eval(), torch.rand(256, 64), False),
            ("residual MLP (F.dropout)", Residual().eval(), torch.rand(256, 64), True),
            ("CNN 1x28x28", cnn.eval(), torch.rand(256, 1, 28, 28), False)]


def median_times(fns, repeats: int) -> list[float]:
    """Median time of each function, the runs interleaved (a burst of load on a shared machine hits both alike)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"N = 50, B = 256, median of {args.repeats}")
    print("| network | original | imported | stored as | imported / original |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, x, functional in networks():
            folder = f"{tmp}/m"
            mcdrop.export_model(model, folder, task="classification", example_input=x[:4])
            loaded = load_artifact(folder).model
            original, imported = MCEngine(model, functional_dropout=functional), MCEngine(loaded)
            flat = x.reshape(len(x), -1)
            want, got = original.sample(x, 50, seed=1), imported.sample(flat, 50, seed=1)
            assert (want - got).abs().max() <= 1e-4 * want.abs().max(), name
            t0, t1 = median_times([lambda: original.sample(x, 50, seed=1), lambda: imported.sample(flat, 50, seed=1)],
                                  args.repeats)
            print(f"| {name} | {t0 * 1e3:.1f} ms | {t1 * 1e3:.1f} ms | {type(loaded).__name__} | {t1 / t0:.2f} |")


if __name__ == "__main__":
    main()
