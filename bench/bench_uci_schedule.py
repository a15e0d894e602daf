"""The heteroscedastic network's training under a constant and a cosine learning rate, traced per epoch.

    MCDROP_DATA=../shared/data .venv/bin/python bench/bench_uci_schedule.py --dataset protein-tertiary-structure \\
        --split 3 --dropout 0.005 --seed 7 -o bench/results/uci26-schedule-protein.jsonl
    .venv/bin/python bench/bench_uci_schedule.py --plot bench/results/uci26-schedule-protein.jsonl \\
        -o bench/results/uci26-schedule-protein.png

Trains one network on split ``k``'s training rows (beta-NLL, the given ``p``, ``epochs x M``) once per schedule
from the same seed (same initial weights, batches and masks), and records every ``E / 50`` epochs, on those
training rows with dropout off: RMSE and mean NLL (standardised units) and the range of the log-variance. Then
scores the test rows (``T`` passes) as the protocol does. One JSON line per schedule (the trace rounded to 4
digits for RMSE and NLL, 2 for the log-variance, whole seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import mcdrop.training.uci as U
from mcdrop.training.configs import LR_SCHEDULES, UCIConfig
from mcdrop.training.data import load_uci


def run(name: str, split: int, p: float, schedule: str, seed: int, multiplier: float, beta: float,
        samples: int) -> dict[str, Any]:
    ds = load_uci(name)
    config = UCIConfig(epochs_multiplier=multiplier, samples=samples, seed=seed, beta_nll=beta, lr_schedule=schedule)
    trace: list[dict[str, float]] = []
    train_stack, start = U._train_stack, time.perf_counter()

    def traced(xs, ys, owner, pp, decay, **kw):  # type: ignore[no-untyped-def]
        x, y, every = xs[0], ys[0], max(1, kw["epochs"] // 50)

        def record(epoch: int, params: tuple[torch.Tensor, ...]) -> None:
            if epoch % every and epoch != kw["epochs"] - 1:
                return
            w1, b1, w2, b2 = (t.detach() for t in params)
            with torch.no_grad():
                out = torch.relu(x @ w1[0] + b1[0]) @ w2[0] + b2[0]
                r2, s = (y - out[:, 0]) ** 2, out[:, 1]
            trace.append({"epoch": epoch, "rmse": round(float(r2.mean().sqrt()), 4), "s_min": round(float(s.min()), 2),
                          "s_max": round(float(s.max()), 2), "nll": round(float((r2 * torch.exp(-s) + s).mean()), 4),
                          "seconds": float(round(time.perf_counter() - start))})

        return train_stack(xs, ys, owner, pp, decay, **kw, on_epoch=record)

    U._train_stack = traced
    try:
        train, test = ds.splits[split]
        model = U.fit_regressor(ds, p, None, config, rows=train)
    finally:
        U._train_stack = train_stack
    scores = U._score(model, ds.x[test], ds.y[test], samples, 1000 + split)
    return {"dataset": name, "split": split, "dropout": p, "schedule": schedule, "seed": seed, "beta_nll": beta,
            "epochs": config.epochs(ds), "samples": samples, "test": scores, "trace": trace}


def plot(path: Path, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for r, colour in zip(runs, ("tab:red", "tab:blue"), strict=False):
        epochs = [t["epoch"] for t in r["trace"]]
        label = f"{r['schedule']} lr: test RMSE {r['test']['rmse']:.2f}, LL {r['test']['ll']:.3f}"
        axes[0].plot(epochs, [t["rmse"] for t in r["trace"]], color=colour, label=label)
        axes[1].plot(epochs, [t["s_max"] for t in r["trace"]], color=colour)
        axes[1].plot(epochs, [t["s_min"] for t in r["trace"]], color=colour, linestyle="--")
    first = runs[0]
    axes[0].set_ylabel("training RMSE, dropout off (standardised; cut at 1.5)")
    axes[0].set_ylim(0.6, 1.5)
    axes[1].set_ylabel("log-variance s: max (solid), min (dashed)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=9)
    fig.suptitle(f"{first['dataset']}, split {first['split']}: beta-NLL {first['beta_nll']:g}, p = {first['dropout']:g}, "
                 f"{first['epochs']} epochs, same seed")
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="protein-tertiary-structure")
    ap.add_argument("--split", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--epochs-multiplier", type=float, default=100.0)
    ap.add_argument("--beta-nll", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--schedules", nargs="+", choices=LR_SCHEDULES, default=list(LR_SCHEDULES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", type=Path, help="only plot this file's runs")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.output)
        return 0
    torch.set_num_threads(args.threads)
    for schedule in args.schedules:
        line = run(args.dataset, args.split, args.dropout, schedule, args.seed, args.epochs_multiplier,
                   args.beta_nll, args.samples)
        with args.output.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(schedule, line["test"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
