"""``mcdrop report MODEL -o DIR``: PNG plots and an HTML page about a model's uncertainty (open DIR/index.html).

Classifiers: reliability, uncertainty histograms, risk-coverage, OOD proxies, conformal coverage (on the
Fashion-MNIST test images).  Regressors: interval calibration and residuals against the predicted spread
(on the held-out test rows named by the card).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, log, setup_torch


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="write plots and an HTML page about a model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", nargs="?", help="model name or folder (default: the default model)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="folder to write (created)")
    p.add_argument("--samples", "-n", type=int, help="MC passes (default: the card's N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    p.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mcdrop.cli.evaluate import _card_samples
    from mcdrop.nets.artifacts import ArtifactError, ModelNotFoundError, load_artifact
    from mcdrop.training.data import DataNotFoundError, fashion_mnist_features, load_fashion_mnist, load_uci
    from mcdrop.training.report import classifier_report, regressor_report, write_page

    setup_torch(args.threads)
    if args.samples is not None and args.samples < 1:
        raise CLIError(f"--samples has to be a positive integer, but got {args.samples}", 2)
    try:
        artifact = load_artifact(args.model)
    except ArtifactError as err:
        raise CLIError(str(err), 2 if isinstance(err, ModelNotFoundError) else 1) from err
    card = artifact.card
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"--output {args.output}: cannot create it: {err.strerror or err}", 2) from err
    notes = []
    try:
        if card.task == "classification":
            from mcdrop.training.proxies import PROXIES, make_proxy

            x, y = load_fashion_mnist(args.data_root, train=False)
            n = args.samples or _card_samples(card, "test_mc_", 50)
            images = (x.numpy() / 255.0).astype("float32")
            proxies = {name: torch.from_numpy(make_proxy(name, images, n=2000)).reshape(-1, card.input_size)
                       for name in PROXIES}
            log(f"report of {card.name} on the 10,000 Fashion-MNIST test images and {len(proxies)} proxy sets, MC N={n}")
            report = classifier_report(artifact.model, card, artifact.calibration, fashion_mnist_features(x), y,
                                       proxies, args.output, n_samples=n, seed=args.seed)
            notes.append(f"Fashion-MNIST test images; MC with N={n}, seed {args.seed}.")
        else:
            from mcdrop.training.uci import holdout_split

            dataset = getattr(card, "dataset", None)
            holdout = card.training.get("holdout")
            if not dataset or not holdout:
                raise CLIError(f"the card of {card.name!r} names no dataset and held-out rows to report on")
            data = load_uci(dataset, args.data_root)
            _, _, test = holdout_split(len(data.y), holdout["fraction"], holdout["seed"])
            n = args.samples or 1000
            x, y = torch.tensor(data.x[test], dtype=torch.float32), torch.tensor(data.y[test], dtype=torch.float32)
            log(f"report of {card.name} on {len(test)} held-out rows of UCI {dataset}, MC N={n}")
            report = regressor_report(artifact.model, card, artifact.calibration, x, y, args.output, n_samples=n,
                                      seed=args.seed, what=f"{len(test)} held-out rows")
            notes.append(f"{len(test)} rows of UCI {dataset} held out of training and calibration; MC with N={n}.")
    except DataNotFoundError as err:
        raise CLIError(str(err)) from err
    page = write_page(args.output, report, card, notes)
    log(f"wrote {len(report['sections'])} figures and {page}")
    return 0
