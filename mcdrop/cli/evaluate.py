"""``mcdrop evaluate MODEL``: a table of metrics for deterministic and MC mode.

Classifiers (Fashion-MNIST) are scored on the 10,000 test images: accuracy, NLL, Brier, ECE (15 bins),
the mean of each uncertainty quantity, AURC and accuracy at 80% coverage.  With --ood FILE (IDX or .npy
images the model was not trained on, uint8 or scaled to [0, 1]; repeatable) or --proxies (the proxy sets
of mcdrop.training.proxies), AUROC, AUPR and FPR at 95% TPR of separating the test images from each set, for
every score: the OOD score (calibrated models), MC mutual information, MC predictive entropy, MC max
probability, deterministic entropy and max probability.  A calibrated model also gets its conformal coverage
and set size per level, and its abstention rate and risk at the default threshold.
UCI regressors are scored on the held-out test rows their card names (or on all rows for a model trained on
all of them), with conformal interval coverage when calibrated.
The defaults (seed 0, N from the card) reproduce the metrics stored in the model card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, log, setup_torch
from mcdrop.io.atomic import atomic_write


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="evaluate a model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", nargs="?", help="name in models/ or a model directory (default model)")
    p.add_argument("--samples", "-n", type=int, metavar="N",
                   help="MC passes (default: the N of the card's MC metrics; else 50 for classifiers, 10000 for "
                        "regressors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0, as in the cards)")
    p.add_argument("--ood", type=Path, metavar="FILE", action="append",
                   help="out-of-distribution images (IDX or .npy); repeatable")
    p.add_argument("--proxies", action="store_true", help="also score the built-in OOD proxy sets")
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


def _ood_table(report: dict[str, dict[str, dict[str, float]]]) -> str:
    scores = list(next(iter(report.values())))
    width = max(len(s) for s in scores)
    lines = [f"{'OOD set':<12}  {'score':<{width}}  {'AUROC':>6}  {'AUPR':>6}  {'FPR95':>6}"]
    for name, row in report.items():
        for score in scores:
            m = row[score]
            lines.append(f"{name:<12}  {score:<{width}}  {m['auroc']:>6.3f}  {m['aupr']:>6.3f}  {m['fpr95']:>6.3f}")
    return "\n".join(lines)


def _coverage_table(report: dict[str, Any]) -> str:
    lines = [f"{'mode':<13}  {'method@level':<18}  {'coverage':>8}  {'size/width':>10}"]
    for mode in ("deterministic", "mc"):
        for key, value in report.get(mode, {}).items():
            if "@" in key:
                size = value.get("mean_size", value.get("mean_width", float("nan")))
                lines.append(f"{mode:<13}  {key:<18}  {value['coverage']:>8.4f}  {size:>10.3f}")
        if "abstention" in report.get(mode, {}):
            a = report[mode]["abstention"]
            lines.append(f"{mode:<13}  abstention: answers {a['coverage']:.1%} of inputs, error rate {a['risk']:.2%} "
                         f"(target {a['target_risk']:.0%})")
            if "with_ood_flag" in a:
                b = a["with_ood_flag"]
                lines.append(f"{mode:<13}  with the OOD flag (the service's default): answers {b['coverage']:.1%}, "
                             f"error rate {b['risk']:.2%}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mcdrop.nets.artifacts import ArtifactError, ModelNotFoundError, load_artifact
    from mcdrop.sampling.engine import MCEngine
    from mcdrop.training.calibrate import coverage_report, ood_report
    from mcdrop.training.data import DataNotFoundError, fashion_mnist_features, load_fashion_mnist, load_uci
    from mcdrop.training.evaluation import evaluate_classifier, evaluate_regressor

    setup_torch(args.threads)
    if args.samples is not None and args.samples < 1:
        raise CLIError(f"--samples has to be a positive integer, but got {args.samples}", 2)
    try:
        artifact = load_artifact(args.model)
    except ArtifactError as err:
        raise CLIError(str(err), 2 if isinstance(err, ModelNotFoundError) else 1) from err
    model, card, calibration = artifact.model, artifact.card, artifact.calibration
    engine = MCEngine(model)
    extra: dict[str, Any] = {}
    try:
        if card.task == "classification":
            if card.input_size != 784:
                raise CLIError(f"model {card.name!r} takes {card.input_size} features; evaluate knows the "
                               "Fashion-MNIST test set (784 pixels) for classifiers")
            sets = {path.name: _images(path, card.input_size) for path in args.ood or []}
            x, y = load_fashion_mnist(args.data_root, train=False)
            if args.proxies:
                from mcdrop.training.proxies import PROXIES, make_proxy

                images = (x.numpy() / 255.0).astype("float32")
                sets.update({name: torch.from_numpy(make_proxy(name, images)).reshape(-1, 784) for name in PROXIES})
            n = args.samples or _card_samples(card, "test_mc_", 50)
            log(f"evaluating {card.name} on the {len(y):,} Fashion-MNIST test images, MC N={n}, seed {args.seed}")
            features = fashion_mnist_features(x)
            metrics = evaluate_classifier(engine, features, y, n_samples=n, seed=args.seed)
            if sets:
                extra["ood"] = ood_report(engine, calibration, features, sets, n_samples=n, seed=args.seed)
            if calibration is not None:
                extra["conformal"] = coverage_report(calibration, model, (features, y), n_samples=n, seed=args.seed)
        else:
            if args.ood or args.proxies:
                raise CLIError("--ood and --proxies apply to classifiers; this model is a regressor", 2)
            dataset = getattr(card, "dataset", None)
            if not dataset:
                raise CLIError(f"the card of {card.name!r} names no UCI dataset ('dataset'); cannot evaluate it")
            data = load_uci(dataset, args.data_root)
            holdout = card.training.get("holdout")
            if holdout:
                from mcdrop.training.uci import holdout_split

                rows = holdout_split(len(data.y), holdout["fraction"], holdout["seed"])[2]
                what, prefix = f"the {len(rows)} held-out test rows", "heldout_test_mc_"
            else:
                rows = np.arange(len(data.y))
                what, prefix = f"all {len(rows)} rows (its training data)", "all_rows_fit_mc_"
            n = args.samples or _card_samples(card, prefix, 10_000)
            log(f"evaluating {card.name} on {what} of UCI {dataset}, MC N={n}, seed {args.seed}")
            xs, ys = torch.tensor(data.x[rows], dtype=torch.float32), torch.tensor(data.y[rows], dtype=torch.float32)
            metrics = evaluate_regressor(engine, xs, ys, n_samples=n, seed=args.seed)
            if calibration is not None:
                extra["conformal"] = coverage_report(calibration, model, (xs, ys), n_samples=min(n, 2000), seed=args.seed)
    except DataNotFoundError as err:
        raise CLIError(str(err)) from err
    print(_table(metrics))
    if "ood" in extra:
        print("\n" + _ood_table(extra["ood"]))
    if "conformal" in extra:
        print("\n" + _coverage_table(extra["conformal"]))
    if args.json:
        try:
            atomic_write(args.json, json.dumps({**metrics, **extra}, indent=1) + "\n")
        except OSError as err:
            raise CLIError(f"--json {args.json}: cannot write: {err.strerror or err}") from err
    return 0
