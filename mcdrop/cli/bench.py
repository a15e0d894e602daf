"""``mcdrop bench uci``: the UCI regression benchmark by the published MC-dropout protocol (mcdrop/uci.py).

Prints a markdown table (RMSE of the MC mean, dropout-off RMSE, test LL; mean ± standard error over
splits) and writes it to ``--output`` with the per-split results beside it as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, log, setup_torch
from mcdrop.training.configs import LR_SCHEDULES

FULL = {"epochs_multiplier": 10.0, "samples": 10_000}
QUICK = {"datasets": ["yacht"], "splits": 2, "epochs_multiplier": 3.0, "samples": 500}


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="run a benchmark (uci)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    u = which.add_parser("uci", help="the nine-dataset UCI regression benchmark", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("--datasets", nargs="+", metavar="NAME", help="datasets (default: all nine)")
    u.add_argument("--splits", type=int, metavar="K", help="first K splits of each dataset (at most its own; default: all)")
    u.add_argument("--epochs-multiplier", type=float, metavar="M",
                   help="epochs = n_epochs.txt x M (default 10, as in the paper's text)")
    u.add_argument("--samples", type=int, metavar="T", help="MC passes for the test metrics (default 10000)")
    u.add_argument("--val-samples", type=int, metavar="T", help="MC passes for the grid search (default: --samples)")
    u.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and masks")
    u.add_argument("--quick", action="store_true",
                   help="pipeline check in under a minute: yacht, 2 splits, x3 epochs, T=500 (flags still override)")
    u.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    u.add_argument("--output", "-o", type=Path, default=Path("uci-benchmark.md"), help="markdown file to write")
    u.add_argument("--threads", type=int, help="torch threads")
    u.add_argument("--concrete", action="store_true",
                   help="learn the dropout rates (Concrete dropout, heteroscedastic head) instead of the grid search")
    u.add_argument("--heteroscedastic", action="store_true",
                   help="grid search over p of a network that predicts mean and log-variance (no tau grid)")
    u.add_argument("--beta-nll", type=float, metavar="BETA",
                   help="with --heteroscedastic or --concrete: the beta-NLL loss, each row's NLL weighted by "
                        "sigma^(2 BETA) held constant (0, the default: the Gaussian NLL; 0.5 keeps noisy rows pulling the mean)")
    u.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="grid search: the learning rate over the epochs (constant, the default and the published "
                        "protocol; cosine decays it to 0 by the last epoch; chosen runs both and takes, per split, "
                        "the one with the higher validation LL, at twice the training time)")
    c = u.add_argument_group("Concrete dropout (with --concrete; the defaults are the published recipe)")
    c.add_argument("--rate-objective", choices=("elbo", "validation"),
                   help="what the rates learn from: elbo, the training loss and the Concrete prior (the default); "
                        "validation, the MC predictive NLL of the last 20%% of the training rows, then a retraining "
                        "on all of them at the learned rates")
    c.add_argument("--floor", type=float, metavar="P", help="a lower bound on every rate (default: none)")
    c.add_argument("--cap", type=float, metavar="P", help="an upper bound on every rate (default: none)")
    c.add_argument("--keep-best", action="store_true",
                   help="with --rate-objective validation: the rates of the check with the lowest held-out NLL")
    u.set_defaults(run=run_uci)


def run_uci(args: argparse.Namespace) -> int:
    import torch

    from mcdrop.training.concrete_uci import ConcreteOptions, run_concrete, summarize_concrete
    from mcdrop.training.configs import ConfigError
    from mcdrop.training.data import UCI_DATASETS, DataNotFoundError, load_uci
    from mcdrop.training.uci import UCIConfig, run_protocol, summarize

    summary: Any = summarize_concrete if args.concrete else summarize

    setup_torch(args.threads)
    if args.concrete and args.val_samples is not None:
        raise CLIError("--val-samples: not used with --concrete (there is no grid to search); leave it out", 2)
    if args.concrete and args.heteroscedastic:
        raise CLIError("--heteroscedastic: --concrete always has the heteroscedastic head; give one of the two", 2)
    if args.concrete and args.lr_schedule is not None:
        raise CLIError("--lr-schedule: sets the grid search's training; --concrete trains with its own options", 2)
    if args.beta_nll is not None and not (args.heteroscedastic or args.concrete):
        raise CLIError("--beta-nll: weighs the heteroscedastic network's loss; give --heteroscedastic (or "
                       "--concrete) with it", 2)
    concrete_flags = {"rate_objective": args.rate_objective, "floor": args.floor, "cap": args.cap,
                      "keep_best": args.keep_best or None}
    for name, value in concrete_flags.items():
        if value is not None and not args.concrete:
            raise CLIError(f"--{name.replace('_', '-')}: sets how Concrete dropout learns its rates; give --concrete "
                           f"with it", 2)
    try:
        options = ConcreteOptions(**{k: v for k, v in concrete_flags.items() if v is not None})
    except ValueError as err:
        flag = next((k for k in concrete_flags if str(err).startswith(f"{k} ")), "concrete")
        raise CLIError(f"--{flag.replace('_', '-')}: {err}", 2) from err
    given = {k: v for k, v in vars(args).items() if v is not None}
    settings = {**FULL, **(QUICK if args.quick else {}), **given}
    datasets = settings.get("datasets") or list(UCI_DATASETS)
    for name in datasets:
        if name not in UCI_DATASETS:
            raise CLIError(f"--datasets: unknown dataset {name!r}; expected some of {', '.join(UCI_DATASETS)}", 2)
    try:
        config = UCIConfig(epochs_multiplier=settings["epochs_multiplier"], samples=settings["samples"],
                           val_samples=settings.get("val_samples"), splits=settings.get("splits"), seed=args.seed,
                           beta_nll=args.beta_nll or 0.0, lr_schedule=args.lr_schedule or "constant")
    except ConfigError as err:
        raise CLIError(f"--{err.field.replace('_', '-')}: {err}", 2) from err
    results = []
    for name in datasets:
        try:
            dataset = load_uci(name, args.data_root)
        except DataNotFoundError as err:
            raise CLIError(str(err)) from err
        result = run_concrete(dataset, config, log=log, options=options) if args.concrete else \
            run_protocol(dataset, config, log=log, heteroscedastic=args.heteroscedastic)
        log(summary([result]).splitlines()[-1])
        results.append(result)
    table = summary(results)
    print(table)
    if args.concrete:
        beta = f", beta-NLL beta = {config.beta_nll:g}" if config.beta_nll else ""
        header = (f"UCI benchmark, Concrete dropout (learned rates: {options.label()}{beta}): epochs "
                  f"x{config.epochs_multiplier:g}, T = {config.samples}, seed {config.seed}, "
                  f"{torch.get_num_threads()} threads.\n\n")
    else:
        head = "heteroscedastic network, " if args.heteroscedastic else ""
        head += f"beta-NLL beta = {config.beta_nll:g}, " if config.beta_nll else ""
        head += {"constant": "", "cosine": "cosine learning rate, ",
                 "chosen": "learning-rate schedule (constant or cosine) chosen per split on validation LL, "
                 }[config.lr_schedule]
        header = (f"UCI benchmark: {head}epochs x{config.epochs_multiplier:g}, T = "
                  f"{config.samples} (grid search T = {config.val_samples or config.samples}), seed {config.seed}.\n\n")
    _write(args.output, header + table + "\n")
    _write(args.output.with_suffix(".json"), json.dumps(
        [{**asdict(r), "config": r.config.as_dict()} for r in results], indent=1) + "\n")
    log(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


def _write(path: Path, text: str) -> None:
    from mcdrop.io.atomic import atomic_write

    try:
        atomic_write(path, text)
    except OSError as err:
        raise CLIError(f"--output {path}: cannot write: {err.strerror}") from err
