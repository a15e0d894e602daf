"""Resumable UCI runs for issue 26: any protocol, any splits, per-split results appended to a JSON-lines file.

    nice -n 19 .venv/bin/python bench/bench_uci_resumable.py --protocol grid-hetero --datasets yacht \\
        --epochs-multiplier 100 --samples 10000 --val-samples 1000 -o bench/results/uci26.jsonl

Run it again with the same flags to continue where it stopped (:mod:`mcdrop.training.uci_resume`).
``--protocol concrete`` takes ``--rate-lr``, ``--floor``, ``--homoscedastic`` (tau grid), ``--trace-every`` and
``--rate-objective validation`` (the rates learn on held-out rows; ``--val-passes`` relaxed passes a row;
``--keep-best``: the rates of the check with the lowest held-out NLL).
``--time-epochs E`` instead trains one chunk's grid stage for ``E`` epochs and prints CPU and wall seconds per
epoch and the CPU-time estimate for the whole protocol (grid stage + retraining of every chunk; scoring not
included).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from mcdrop.training.concrete_uci import ConcreteOptions, RateObjective
from mcdrop.training.configs import LR_SCHEDULES, UCIConfig
from mcdrop.training.data import load_uci
from mcdrop.training.uci import _fit_many
from mcdrop.training.uci_resume import PROTOCOLS, run_resumable, summarise_results


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def time_epochs(name: str, config: UCIConfig, protocol: str, chunk: int, epochs: int) -> None:
    """Seconds per epoch of one chunk's grid stage (``chunk`` splits x the grid, stacked) and the estimate."""
    ds = load_uci(name)
    grid = [(p, t) for p in ds.dropout_rates for t in ds.tau_values] if protocol == "grid" else \
        [(p, None) for p in ds.dropout_rates]
    rows = [train[: len(train) - round(config.val_fraction * len(train))] for train, _ in ds.splits[:chunk]]
    short = UCIConfig(epochs_multiplier=epochs / ds.n_epochs, samples=config.samples, seed=config.seed)
    start, cpu = time.perf_counter(), time.process_time()
    _fit_many(ds, rows, [grid] * len(rows), short, torch.Generator().manual_seed(0))
    wall_epoch = (time.perf_counter() - start) / epochs
    per_epoch = (time.process_time() - cpu) / epochs  # CPU seconds: less sensitive to the other jobs than wall
    full = config.epochs(ds)
    n_chunks = -(-len(ds.splits) // chunk)
    # retraining: chunk networks on all training rows (1.25x the rows) instead of chunk x |grid| on 80%
    retrain = per_epoch * 1.25 / len(grid)
    estimate = n_chunks * full * (per_epoch + retrain)
    print(f"| {name} | {protocol} | {len(ds.y)} | {chunk} x {len(grid)} | {epochs} | {per_epoch:.3f} s | "
          f"{wall_epoch:.3f} s | {full} | {estimate / 3600:.1f} h |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=PROTOCOLS, required=True)
    ap.add_argument("--datasets", nargs="+", required=True)
    ap.add_argument("--splits", nargs="+", type=int, help="split indices (default: all)")
    ap.add_argument("--epochs-multiplier", type=float, default=100.0)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--val-samples", type=int, default=1_000)
    ap.add_argument("--chunk", type=int, default=5, help="splits per stacked training run (the resume unit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beta-nll", type=float, default=0.0,
                    help="grid-hetero, concrete (heteroscedastic): the beta-NLL loss's beta")
    ap.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                    help="grid, grid-hetero: the learning rate over the epochs")
    ap.add_argument("--rate-lr", type=float)
    ap.add_argument("--floor", type=float, default=0.0)
    ap.add_argument("--cap", type=float, default=1.0, help="concrete: an upper bound on the rates (1: none)")
    ap.add_argument("--homoscedastic", action="store_true", help="concrete: the homoscedastic head with a tau grid")
    ap.add_argument("--trace-every", type=int, default=0)
    ap.add_argument("--rate-objective", choices=list(RateObjective), default="elbo",
                    help="concrete: what the rates learn from (elbo: the training loss, the published recipe; "
                         "validation: the MC predictive NLL of held-out rows)")
    ap.add_argument("--val-passes", type=int, help="concrete, validation: relaxed passes per held-out row (default 8)")
    ap.add_argument("--keep-best", action="store_true",
                    help="concrete, validation: keep the rates of the check with the lowest held-out NLL")
    ap.add_argument("--time-epochs", type=int, help="only time E epochs of one chunk's grid stage per dataset")
    ap.add_argument("-o", "--output", type=Path, default=Path("bench/results/uci26.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.protocol == "concrete" and "--lr-schedule" in sys.argv:
        ap.error("--lr-schedule: grid and grid-hetero only (concrete trains with its own options)")
    config = UCIConfig(epochs_multiplier=args.epochs_multiplier, samples=args.samples, val_samples=args.val_samples,
                       seed=args.seed, beta_nll=args.beta_nll, lr_schedule=args.lr_schedule)
    if args.time_epochs:
        print(f"| dataset | protocol | N | networks | epochs timed | CPU s / epoch | wall s / epoch | epochs (x M) | "
              f"estimate, CPU ({args.threads} thread) |")
        print("|---|---|---:|---|---:|---:|---:|---:|---:|")
        for name in args.datasets:
            time_epochs(name, config, args.protocol, args.chunk, args.time_epochs)
        return 0
    if args.val_passes is not None and args.rate_objective != "validation":
        ap.error("--val-passes: only with --rate-objective validation")
    try:
        options = ConcreteOptions(rate_lr=args.rate_lr, floor=args.floor, cap=args.cap,
                                  heteroscedastic=not args.homoscedastic,
                                  trace_every=args.trace_every, rate_objective=args.rate_objective,
                                  val_passes=8 if args.val_passes is None else args.val_passes,
                                  keep_best=args.keep_best
                                  ) if args.protocol == "concrete" else None
    except ValueError as err:
        ap.error(str(err))
    for name in args.datasets:
        ds = load_uci(name)
        lines = run_resumable(ds, config, args.output, protocol=args.protocol, options=options, chunk=args.chunk,
                              splits=args.splits, log=log)
        s = summarise_results(lines)
        log(f"{name} {args.protocol}: {s['splits']} splits, RMSE {s['rmse'][0]:.3f} ± {s['rmse'][1]:.3f}, "
            f"LL {s['ll'][0]:.3f} ± {s['ll'][1]:.3f}, {s['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
