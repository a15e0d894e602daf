"""``mcdrop evaluate MODEL``: a table of metrics for deterministic and MC mode.

Classifiers (Fashion-MNIST) are scored on the 10,000 test images: accuracy, NLL, Brier, ECE (15 bins),
the mean of each uncertainty quantity, AURC and accuracy at 80% coverage; with --ood FILE (IDX or .npy
images the model was not trained on, uint8 or scaled to [0, 1]) also AUROC, AUPR and FPR at 95% TPR of
separating test from OOD inputs by predictive entropy, mutual information and max probability.
UCI regressors are scored on the rows of the dataset named in their card (the shipped regressor was
trained on all of them, so these are fit metrics; its card holds the protocol's test metrics too).
The defaults (seed 0, N from the card) reproduce the metrics stored in the model card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, log, setup_torch


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="evaluate a model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", nargs="?", help="name in models/ or a model directory (default model)")
    p.add_argument("--samples", "-n", type=int, metavar="N",
                   help="MC passes (default: the N of the card's MC metrics; else 50 for classifiers, 10000 for "
                        "regressors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0, as in the cards)")
    p.add_argument("--ood", type=Path, metavar="FILE", help="out-of-distribution images (IDX or .npy)")
    p.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--threads", type=int, help="torch threads")
    p.set_defaults(run=run)


def _images(path: Path, width: int) -> Any:
    """All rows of an IDX/.npy file as a float tensor in [0, 1] (uint8 divided by 255)."""
    import numpy as np
    import torch

    from mcdrop.io.readers import InputError, open_input

    try:
        source = open_input(path, chunk_rows=8192)
        if source.format not in ("idx", "npy"):
            raise CLIError(f"--ood {path}: expected an IDX or .npy file of images, but got {source.format}", 2)
        chunks = list(source.chunks)
    except InputError as err:
        raise CLIError(f"--ood {err}", 2 if err.usage else 1) from err
    if source.width != width:
        raise CLIError(f"--ood {path}: images have {source.width} pixels, but the model expects {width}")
    bad = [row for c in chunks for row, _ in c.bad]
    if bad:
        raise CLIError(f"--ood {path}: row {bad[0]} holds NaN or infinity")
    x = np.concatenate([c.x for c in chunks])
    return torch.from_numpy(x / 255.0 if source.dtype == np.uint8 else x).float()


def _card_samples(card: Any, prefix: str, default: int) -> int:
    """The N of the card's MC metrics (stored under ``<prefix><N>``), so the defaults reproduce the card."""
    for key in getattr(card, "metrics", None) or {}:
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            return int(key[len(prefix):])
    return default


def _table(metrics: dict[str, dict[str, float]]) -> str:
    names = list(dict.fromkeys(k for row in metrics.values() for k in row))
    width = max(len(n) for n in names)
    lines = [f"{'metric':<{width}}  {'deterministic':>13}  {'mc':>10}"]
    for n in names:
        cells = [f"{metrics[m][n]:.4f}" if n in metrics[m] else "-" for m in ("deterministic", "mc")]
        lines.append(f"{n:<{width}}  {cells[0]:>13}  {cells[1]:>10}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from mcdrop.core.artifacts import ArtifactError, ModelNotFoundError, load_model
    from mcdrop.core.engine import MCEngine
    from mcdrop.training.data import DataNotFoundError, fashion_mnist_features, load_fashion_mnist, load_uci
    from mcdrop.training.evaluation import evaluate_classifier, evaluate_regressor

    setup_torch(args.threads)
    if args.samples is not None and args.samples < 1:
        raise CLIError(f"--samples has to be a positive integer, but got {args.samples}", 2)
    try:
        model, card = load_model(args.model)
    except ArtifactError as err:
        raise CLIError(str(err), 2 if isinstance(err, ModelNotFoundError) else 1) from err
    engine = MCEngine(model)
    try:
        if card.task == "classification":
            if card.input_size != 784:
                raise CLIError(f"model {card.name!r} takes {card.input_size} features; evaluate knows the "
                               "Fashion-MNIST test set (784 pixels) for classifiers")
            ood = _images(args.ood, card.input_size) if args.ood else None
            x, y = load_fashion_mnist(args.data_root, train=False)
            n = args.samples or _card_samples(card, "test_mc_", 50)
            log(f"evaluating {card.name} on the {len(y):,} Fashion-MNIST test images, MC N={n}, seed {args.seed}")
            metrics = evaluate_classifier(engine, fashion_mnist_features(x), y, n_samples=n, seed=args.seed, ood=ood)
        else:
            if args.ood:
                raise CLIError("--ood applies to classifiers; this model is a regressor", 2)
            dataset = getattr(card, "dataset", None)
            if not dataset:
                raise CLIError(f"the card of {card.name!r} names no UCI dataset ('dataset'); cannot evaluate it")
            data = load_uci(dataset, args.data_root)
            n = args.samples or _card_samples(card, "all_rows_fit_mc_", 10_000)
            log(f"evaluating {card.name} on all {len(data.y)} rows of UCI {dataset} (its training data), "
                f"MC N={n}, seed {args.seed}")
            metrics = evaluate_regressor(engine, torch.tensor(data.x, dtype=torch.float32),
                                         torch.tensor(data.y, dtype=torch.float32), n_samples=n, seed=args.seed)
    except DataNotFoundError as err:
        raise CLIError(str(err)) from err
    print(_table(metrics))
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=1) + "\n")
    return 0
