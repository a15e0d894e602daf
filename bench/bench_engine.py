"""Engine benchmark, CPU: the reference MLP, the shipped models, the sparse sum's crossover, the machine's peak.

    python bench/bench_engine.py [--threads 2] [--repeats 15] [--data DIR] [--out results.md]

1. Reference MLP (784-256-256-10, dropout 0.2/0.5, random weights and uniform inputs), time to produce the
   (N, B, 10) samples: (a) a loop of N training-mode passes; (b) the batch replicated N times and one
   training-mode pass (torch-uncertainty's ``mc_dropout(on_batch=True)``); (c) ``MCEngine.sample`` (the fused
   DropoutMLP kernel); (c') ``MCEngine(fast=False)`` (the generic path); (d) the dense floor: the linear
   layers as matrix products (784->256 on B rows, 256->256 and 256->10 on N*B rows).
2. Shipped models at N = 50 on real inputs (Fashion-MNIST test images; concrete's rows): the generic path (the
   engine before the fused kernel), the fused kernel, rows/s, and the multiply-adds each does per second: the
   dense count (every layer on every pass) and the count the kernel performs (the surviving units, measured),
   as a fraction of the machine's peak.
3. Crossover: a 1024 -> 1024 layer under input dropout p, computed by the kernel's correction (p * 1024 rows of
   W^T per pass) against one matrix product per pass, for the density at which the sparse sum stops paying.
4. The shipped CNN (fashion-cnn) at N = 50 on Fashion-MNIST test images: (a) a loop of N passes with the dropout
   layers in training mode (BatchNorm in eval); (b) the batch replicated N times, one such pass; (c)
   ``MCEngine.sample`` (the first conv block once per image, the rest on N*B); (c') ``MCEngine(share_prefix=False)``.
   ``--sections 4`` runs this one alone.
Peak: the best multiply-add rate of a large float32 matrix product (torch's BLAS, the same threads).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcdrop import DropoutMLP, MCEngine
from mcdrop.sampling.runtime import tune_allocator


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


def peak_gmacs(repeats: int) -> float:
    """Multiply-adds per second (G) of a 4096^3 float32 matrix product: the practical peak of this machine."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    return 4096**3 / median_ms(lambda: a @ b, max(3, repeats // 3)) / 1e6


def dense_macs(model: DropoutMLP) -> int:
    """Multiply-adds of one pass."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def reference(args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    ours = DropoutMLP(784, [256, 256], 10, dropout=[0.2, 0.5]).eval()
    lin = [m for m in ours.modules() if isinstance(m, nn.Linear)]
    plain = nn.Sequential(lin[0], nn.ReLU(), nn.Dropout(0.2), lin[1], nn.ReLU(), nn.Dropout(0.5), lin[2]).train()
    fused, generic = MCEngine(ours), MCEngine(ours, fast=False)
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.detach(), m.bias.detach()) for m in lin]
    rows = ["| B | N | (a) loop | (b) replicate | (c) mcdrop | (c') generic | (d) floor | (b)/(c) | (c)/(d) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in args.batches:
        x = torch.rand(b, 784)
        for n in (30, 100):
            hidden = torch.rand(n * b, 256)
            # the fused kernel first: right after the large allocations of the other methods its first runs
            # are slower (page faults), which is not its steady state
            t_ours = median_ms(lambda: fused.sample(x, n, seed=0), args.repeats)
            t_loop = median_ms(lambda: torch.stack([plain(x) for _ in range(n)]), args.repeats)
            t_rep = median_ms(lambda: plain(x.repeat(n, 1)).view(n, b, 10), args.repeats)
            t_gen = median_ms(lambda: generic.sample(x, n, seed=0), args.repeats)
            t_floor = median_ms(lambda: (nn.functional.linear(x, w1, b1),
                                         nn.functional.linear(nn.functional.linear(hidden, w2, b2), w3, b3)),
                                args.repeats)
            rows.append(f"| {b} | {n} | {t_loop:.2f} | {t_rep:.2f} | {t_ours:.2f} | {t_gen:.2f} | {t_floor:.2f} "
                        f"| {t_rep / t_ours:.2f}x | {t_ours / t_floor:.2f}x |")
            print(rows[-1], flush=True)
    densities = ", ".join(f"{d:.2f}" for d in fused._fast_path().densities()[1:]) if fused._fast_path() else "n/a"
    return [*rows, "", f"Densities of the hidden layers' inputs measured by the kernel (share that survive ReLU and "
                       f"dropout): {densities}; the first layer runs once per input (no input dropout)."]


def shipped_inputs(name: str, root: str | None) -> torch.Tensor | None:
    from mcdrop.training.data import DataNotFoundError, fashion_mnist_features, load_fashion_mnist, load_uci

    try:
        if name == "fashion-mnist":
            images, _ = load_fashion_mnist(root, train=False)
            return fashion_mnist_features(images[:256]).flatten(1)
        data = load_uci(name, root)
        return torch.as_tensor(data.x[:256], dtype=torch.float32)
    except DataNotFoundError:
        return None


def shipped(args: argparse.Namespace, peak: float) -> list[str]:
    from mcdrop.nets.artifacts import load_artifact

    n = 50
    rows = ["| model | B | generic ms | fused ms | speed-up | generic rows/s | fused rows/s | dense floor ms "
            "| dense-equivalent GMAC/s (x peak) | performed GMAC/s (% peak) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for name in ("fashion-mnist", "concrete"):
        model = load_artifact(name).model
        x_all = shipped_inputs(name, args.data)
        if x_all is None:
            notes.append(f"{name}: skipped, no data under the data root")
            continue
        fused, generic = MCEngine(model), MCEngine(model, fast=False)
        lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
        per_pass = dense_macs(model)
        fused.sample(x_all, 20, seed=1)  # the kernel counts densities over its first passes
        plan = fused._plan
        density = plan.densities() if plan else []
        performed = sum(d * m.in_features * m.out_features for d, m in zip(density, lin, strict=True))
        if model.input_dropout == 0 and density:  # z W1^T once per row instead of per pass
            performed -= lin[0].in_features * lin[0].out_features
        notes.append(f"{name}: densities {', '.join(f'{d:.3f}' for d in density)}; dense {per_pass:,} multiply-adds "
                     f"per pass, the kernel {performed:,.0f} per pass (plus z W1^T once per row)")
        for b in args.batches[:3]:
            x = x_all[:b]
            t_fused = median_ms(lambda: fused.sample(x, n, seed=0), args.repeats)  # first: see reference()
            t_gen = median_ms(lambda: generic.sample(x, n, seed=0), args.repeats)
            inputs = [torch.randn(n * b, m.in_features) for m in lin]
            t_floor = median_ms(lambda: [nn.functional.linear(h, m.weight, m.bias) for h, m in zip(inputs, lin,
                                                                                                strict=True)],
                                args.repeats)
            dense_rate = n * b * per_pass / t_fused / 1e6
            done_rate = (n * b * performed + b * lin[0].in_features * lin[0].out_features) / t_fused / 1e6
            rows.append(f"| {name} | {b} | {t_gen:.2f} | {t_fused:.2f} | {t_gen / t_fused:.2f}x | {b / t_gen * 1e3:,.0f} "
                        f"| {b / t_fused * 1e3:,.0f} | {t_floor:.2f} | {dense_rate:.1f} ({dense_rate / peak:.2f}x) "
                        f"| {done_rate:.1f} ({done_rate / peak:.0%}) |")
            print(rows[-1], flush=True)
    return [*rows, "", *notes]


def crossover(args: argparse.Namespace) -> list[str]:
    """Fused (correction at density p) vs dense, one 1024 -> 1024 layer, 256 rows x 50 passes."""
    rows = ["| p (density) | fused ms | dense product ms | fused / dense |", "|---:|---:|---:|---:|"]
    b, n = 256, 50
    x = torch.randn(b, 1024)
    dense_in = torch.randn(b * n, 1024)
    layer = nn.Linear(1024, 1024)
    t_dense = median_ms(lambda: nn.functional.linear(dense_in, layer.weight, layer.bias), args.repeats)
    for p in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
        torch.manual_seed(0)
        model = DropoutMLP(1024, [1024], 2, dropout=0.5, input_dropout=p).eval()
        engine = MCEngine(model)
        t = median_ms(lambda: engine.sample(x, n, seed=0), args.repeats)
        rows.append(f"| {p:.2f} | {t:.2f} | {t_dense:.2f} | {t / t_dense:.2f} |")
        print(rows[-1], flush=True)
    rows += ["", "The whole fused path against the generic one, 784-1024-1024-10 without input dropout (its first layer "
             "runs once per input on both paths), hidden dropout 0.1, biases raised to make the hidden layers denser, "
             "256 rows x 50 passes (the engine's density guard switched off):", "",
             "| hidden densities | fused ms | generic ms | fused / generic |", "|---|---:|---:|---:|"]
    from mcdrop.nets import mlp_plan

    judged, mlp_plan.DENSITY_PAIRS = mlp_plan.DENSITY_PAIRS, 1 << 62
    try:
        x = torch.randn(b, 784)
        for shift in (0.0, 0.7, 3.0):
            torch.manual_seed(0)
            model = DropoutMLP(784, [1024, 1024], 10, dropout=0.1).eval()
            for layer in (model.net[0], model.net[3]):
                layer.bias.add_(shift * layer.weight.norm(dim=1))
            fused, generic = MCEngine(model), MCEngine(model, fast=False)
            t_fused = median_ms(lambda: fused.sample(x, n, seed=0), args.repeats)
            t_gen = median_ms(lambda: generic.sample(x, n, seed=0), args.repeats)
            densities = ", ".join(f"{d:.2f}" for d in fused._fast_path().densities()[1:])
            rows.append(f"| {densities} | {t_fused:.2f} | {t_gen:.2f} | {t_fused / t_gen:.2f} |")
            print(rows[-1], flush=True)
    finally:
        mlp_plan.DENSITY_PAIRS = judged
    return rows


def cnn(args: argparse.Namespace) -> list[str]:
    from mcdrop.nets.artifacts import load_artifact
    from mcdrop.nets.models import multiply_adds
    from mcdrop.sampling.layers import MCDropoutLayer

    n = 50
    model = load_artifact("fashion-cnn").model
    x_all = shipped_inputs("fashion-mnist", args.data)
    if x_all is None:
        return ["skipped: no Fashion-MNIST under the data root"]
    loop_model = load_artifact("fashion-cnn").model.eval()
    for m in loop_model.modules():
        if isinstance(m, MCDropoutLayer):
            m.train()
    engine, replicated = MCEngine(model), MCEngine(model, share_prefix=False)
    rows = [f"fashion-cnn: {multiply_adds(model, x_all[:1]):,} multiply-adds per pass; N = {n}.", "",
            "| B | (a) loop ms | (b) replicated batch ms | (c) engine ms | (c') engine, no prefix sharing ms "
            "| (a)/(c) | (b)/(c) | engine rows/s |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in args.batches[:3]:
        x = x_all[:b]
        t_loop = median_ms(lambda: torch.stack([loop_model(x) for _ in range(n)]), max(3, args.repeats // 3))
        t_rep = median_ms(lambda: loop_model(x.repeat(n, 1)).view(n, b, -1), args.repeats)
        t_eng = median_ms(lambda: engine.sample(x, n, seed=0), args.repeats)
        t_nos = median_ms(lambda: replicated.sample(x, n, seed=0), args.repeats)
        rows.append(f"| {b} | {t_loop:.1f} | {t_rep:.1f} | {t_eng:.1f} | {t_nos:.1f} | {t_loop / t_eng:.2f}x "
                    f"| {t_rep / t_eng:.2f}x | {b / t_eng * 1e3:,.0f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256, 1024])
    parser.add_argument("--data", help="data root (default: $MCDROP_DATA or ../shared/data)")
    parser.add_argument("--out", help="also write the markdown tables to this file")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4], help="which sections to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = tune_allocator()
    with torch.inference_mode():
        peak = peak_gmacs(args.repeats)
        header = (f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, allocator tuned: "
                  f"{tuned}; medians of {args.repeats} runs, milliseconds. Peak: {peak:.1f} G multiply-adds/s "
                  "(4096^3 float32 matrix product).")
        print(header, flush=True)
        parts = {1: ("1. Reference MLP", lambda: reference(args)),
                 2: ("2. Shipped models, N = 50", lambda: shipped(args, peak)),
                 3: ("3. Sparse sum vs matrix product", lambda: crossover(args)),
                 4: ("4. The shipped CNN, N = 50", lambda: cnn(args))}
        sections = [(parts[i][0], parts[i][1]()) for i in args.sections]
    text = "\n".join([header, ""] + [line for title, rows in sections for line in ("", f"### {title}", "", *rows)])
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
