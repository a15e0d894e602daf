"""``mcdrop train``: train a model and save it with its model card.

``mcdrop train fashion-mnist``: a dropout MLP or CNN classifier (presets, a JSON config or flags).
``mcdrop train uci NAME``: a UCI regressor by the published protocol: the grid search and test metrics
over the dataset's splits (as ``mcdrop bench uci``), then one network on every row with the pair chosen
on most splits.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, is_terminal, log, setup_torch

SHIPPED = {"tuned": "models/fashion-mnist", "tuned-robust": "models/fashion-mnist-robust", "cnn": "models/fashion-cnn",
           "cnn-robust": "models/fashion-cnn-robust"}
"""The bundled models each preset built (their cards' ``training`` sections hold the exact configuration)."""
PRESETS: dict[str, dict[str, Any]] = {
    "reference": {},  # the textbook recipe: 784-256-256-10, dropout 0.2/0.5, SGD 0.1, batch 256, 10 epochs
    "tuned": {"hidden": [1024, 1024], "dropout": [0.3, 0.3], "input_dropout": 0.1, "optimizer": "sgd", "lr": 0.05,
              "momentum": 0.9, "schedule": "cosine", "epochs": 40, "batch_size": 128, "calibrate": True},
    "cnn": {"architecture": "cnn", "channels": [32, 64], "convs_per_block": 2, "channel_dropout": [0.1, 0.2], "hidden": [256],
            "dropout": [0.5], "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "cosine", "epochs": 30,
            "batch_size": 128, "weight_decay": 5e-4, "augment": True, "calibrate": True},
}
# trained on covariate shifts (issue 22); the MLP needs twice the epochs to fit the shifted images as well
PRESETS["tuned-robust"] = {**PRESETS["tuned"], "shift_augment": True, "epochs": 80}
PRESETS["cnn-robust"] = {**PRESETS["cnn"], "shift_augment": True}


def add_parser(sub: Any, name: str) -> None:
    from mcdrop.training.configs import ClassifierConfig

    parent = sub.add_parser(name, help="train a model", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parent.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    _add_uci(which)
    p = which.add_parser("fashion-mnist", help="a Fashion-MNIST classifier: dropout MLP or CNN",
                         description=_presets_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference",
                   help="starting configuration (listed above; flags and --config override its fields)")
    p.add_argument("--config", type=Path, help="JSON file of config fields (override the preset)")
    for f in fields(ClassifierConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("list[int]", "list[float]"):
            kind = int if f.type == "list[int]" else float
            p.add_argument(flag, type=kind, nargs="+", help=f.metadata["help"])
        elif f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=f.metadata["help"])
        else:
            p.add_argument(flag, type={"int": int, "float": float}.get(str(f.type), str), help=f.metadata["help"])
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="model directory to write (models/NAME replaces a bundled model in a checkout)")
    p.add_argument("--model-name", help="model name in the card (default: the directory name)")
    p.add_argument("--model-version", default="1", help="the card's version (default 1), e.g. 2 for a retrained "
                                                       "model that replaces version 1")
    p.add_argument("--name", dest="model_name", action=_Deprecated, help=argparse.SUPPRESS)
    p.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    p.add_argument("--eval-samples", type=int, default=50, help="MC passes for the card's test metrics")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.set_defaults(run=run)


_ALWAYS_SHOWN = ("architecture", "hidden", "dropout", "input_dropout", "optimizer", "lr", "schedule", "epochs",
                 "batch_size")


def _presets_text() -> str:
    """The ``train fashion-mnist`` description: what each preset sets, and which built the shipped models."""
    from mcdrop.training.configs import CNN_ONLY, ClassifierConfig

    lines = ["mcdrop train fashion-mnist: a dropout MLP or CNN classifier on Fashion-MNIST (pixels / 255).", "",
             "Presets (every field not listed keeps its default; flags and --config override a preset):"]
    for name, values in PRESETS.items():
        config = ClassifierConfig(**values)
        shown = {k: v for k, v in config.as_dict().items() if k in values or k in _ALWAYS_SHOWN}
        if config.architecture != "cnn":
            shown = {k: v for k, v in shown.items() if k not in CNN_ONLY}
        text = ", ".join(f"{k}={' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in shown.items())
        built = f"; built the shipped {SHIPPED[name]}" if name in SHIPPED else ""
        lines += textwrap.wrap(f"{name}: {text}{built}", 110, initial_indent="  ", subsequent_indent="      ")
    lines += ["", "Example: mcdrop train fashion-mnist --preset tuned -o retrained/fashion-mnist"]
    return "\n".join(lines)


class _Deprecated(argparse.Action):
    """A deprecated spelling of an option: still works, with one warning line naming the new one."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        log(f"mcdrop train: warning: {option} is deprecated; use --model-name (the same in train uci)")
        setattr(namespace, self.dest, values)


def _add_uci(which: Any) -> None:
    u = which.add_parser("uci", help="a UCI regressor by the published MC-dropout protocol")
    u.add_argument("name", metavar="NAME", help="UCI dataset, e.g. concrete")
    u.add_argument("--epochs-multiplier", type=float, default=10.0, help="epochs = n_epochs.txt x M (10)")
    u.add_argument("--samples", type=int, default=10_000, help="MC passes T for the test metrics (10000)")
    u.add_argument("--val-samples", type=int, help="MC passes for the grid search (default: --samples)")
    u.add_argument("--splits", type=int, help="first K splits for the protocol metrics (default: all)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--holdout", type=float, default=0.3, metavar="F",
                   help="share of rows the final network does not see: half calibrate its conformal intervals, half "
                        "test them (0.3; 0 trains on every row, without calibration)")
    u.add_argument("--output", "-o", type=Path, required=True, help="model directory to write")
    u.add_argument("--model-name", help="model name in the card (default: the directory name)")
    u.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    u.add_argument("--threads", type=int, help="torch threads")
    u.set_defaults(run=run_uci)


def run_uci(args: argparse.Namespace) -> int:
    import torch

    from mcdrop.nets.artifacts import save_model
    from mcdrop.sampling.engine import MCEngine
    from mcdrop.training.calibrate import calibrate_regressor, coverage_report
    from mcdrop.training.configs import ConfigError
    from mcdrop.training.data import UCI_DATASETS, DataNotFoundError, load_uci
    from mcdrop.training.evaluation import evaluate_regressor
    from mcdrop.training.uci import UCIConfig, fit_regressor, holdout_split, run_protocol

    setup_torch(args.threads)
    if args.name not in UCI_DATASETS:
        raise CLIError(f"unknown UCI dataset {args.name!r}: expected one of {', '.join(UCI_DATASETS)}", 2)
    try:
        config = UCIConfig(epochs_multiplier=args.epochs_multiplier, samples=args.samples,
                           val_samples=args.val_samples, splits=args.splits, seed=args.seed)
    except ConfigError as err:
        raise CLIError(f"--{err.field.replace('_', '-')}: {err}", 2) from err
    try:
        dataset = load_uci(args.name, args.data_root)
    except DataNotFoundError as err:
        raise CLIError(str(err)) from err
    if not 0 <= args.holdout < 1:
        raise CLIError(f"--holdout has to be in [0, 1), but got {args.holdout}", 2)
    protocol = run_protocol(dataset, config, log=log)
    p, tau = protocol.chosen()
    assert tau is not None  # the homoscedastic protocol searches tau (None is the heteroscedastic head's)
    train_rows, cal_rows, test_rows = holdout_split(len(dataset.y), args.holdout, args.seed)
    log(f"protocol done in {protocol.seconds:.0f} s; training on {len(train_rows)} of {len(dataset.y)} rows with "
        f"p={p:g}, tau={tau:g}" + (f" ({len(cal_rows)} calibrate, {len(test_rows)} test)" if args.holdout else ""))
    model = fit_regressor(dataset, p, tau, config, train_rows)
    as_tensor = lambda rows: (torch.tensor(dataset.x[rows], dtype=torch.float32),  # noqa: E731
                              torch.tensor(dataset.y[rows], dtype=torch.float32))
    calibrated, metrics = None, {}
    if args.holdout:
        calibrated = calibrate_regressor(model, calibration=as_tensor(cal_rows), n_samples=min(config.samples, 2000),
                                         seed=args.seed)
        held = evaluate_regressor(MCEngine(model), *as_tensor(test_rows), n_samples=config.samples, seed=0)
        coverage = coverage_report(calibrated, model, as_tensor(test_rows), n_samples=min(config.samples, 2000), seed=0)
        metrics = {f"heldout_test_mc_{config.samples}": held["mc"], "heldout_test_deterministic": held["deterministic"],
                   "heldout_test_conformal": coverage}
        log(f"held-out test: RMSE {held['mc']['rmse']:.3f}, conformal 90% coverage "
            f"{coverage['mc']['normalised@0.9']['coverage']:.3f}")
    else:
        fit = evaluate_regressor(MCEngine(model), *as_tensor(train_rows), n_samples=config.samples, seed=0)
        metrics = {f"all_rows_fit_mc_{config.samples}": fit["mc"], "all_rows_fit_deterministic": fit["deterministic"]}
    name = args.model_name or args.output.name
    test = {k: dict(zip(("mean", "standard_error"), protocol.mean_se(k), strict=True))
            for k in ("rmse", "rmse_deterministic", "ll")}
    trained_on = f"{len(train_rows)} of its rows" if args.holdout else "all rows"
    card = save_model(model, args.output, {
        "name": name, "version": "1", "task": "homoscedastic", "dataset": args.name,
        "description": f"UCI {args.name} MC-dropout regressor (Gal & Ghahramani 2016 protocol), trained on {trained_on}.",
        "input_shape": [dataset.x.shape[1]], "input_size": int(dataset.x.shape[1]),
        "normalisation": "raw feature values in the dataset's units, in the order of index_features.txt; the model "
                         "standardises inputs and the target internally with the statistics of its training rows",
        "tau": tau,
        "training": {**config.as_dict(), "dropout": p, "tau": tau, "epochs": protocol.epochs,
                     "n_hidden": dataset.n_hidden, "optimizer": "adam", "lr": config.lr, "batch_size": 128,
                     "weight_decay": config.length_scale**2 * (1 - p) / (2 * len(train_rows) * tau),
                     "chosen_pairs": [[s.dropout, s.tau] for s in protocol.splits],
                     **({"holdout": {"fraction": args.holdout, "seed": args.seed}} if args.holdout else {})},
        "data": f"UCI {args.name} ({len(dataset.y)} rows, {dataset.x.shape[1]} features); protocol metrics on the "
                f"{len(protocol.splits)} fixed train/test splits; the final network trained on {trained_on}"
                + (f", {len(cal_rows)} held-out rows calibrate its conformal intervals and {len(test_rows)} test them "
                   f"(mcdrop.training.uci.holdout_split({len(dataset.y)}, {args.holdout}, {args.seed}))"
                   if args.holdout else ""),
        "metrics": {f"protocol_test_T{config.samples}": test, **metrics, "evaluation_seed": 0},
    }, calibration=calibrated)
    log(f"saved {args.output} (sha256 {card.weights_sha256[:12]}...)")
    for key, value in test.items():
        log(f"protocol test {key}: {value['mean']:.3f} ± {value['standard_error']:.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    from mcdrop.nets.artifacts import save_model
    from mcdrop.sampling.engine import MCEngine
    from mcdrop.training.classifier import ClassifierConfig, calibrate_and_measure, split_indices, train_classifier
    from mcdrop.training.configs import ConfigError
    from mcdrop.training.data import FASHION_MNIST_CLASSES, DataNotFoundError, fashion_mnist_features, load_fashion_mnist
    from mcdrop.training.evaluation import evaluate_classifier

    setup_torch(args.threads)
    values = dict(PRESETS[args.preset])
    if args.config:
        try:
            values.update(json.loads(args.config.read_text()))
        except (OSError, ValueError) as err:
            raise CLIError(f"--config {args.config}: cannot read a JSON object of config fields: {err}", 2) from err
    for f in fields(ClassifierConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    try:
        config = ClassifierConfig(**values)
    except ConfigError as err:
        raise CLIError(f"--{err.field.replace('_', '-')}: {err}", 2) from err
    except TypeError as err:
        raise CLIError(f"--config: {err}", 2) from err
    try:
        train_x, train_y = load_fashion_mnist(args.data_root, train=True)
        test_x, test_y = load_fashion_mnist(args.data_root, train=False)
    except DataNotFoundError as err:
        raise CLIError(str(err)) from err
    log(f"training {config.relevant()}")
    features = fashion_mnist_features(train_x)
    model, history = train_classifier(config, features, train_y, log=log, progress=is_terminal())
    log(f"trained in {history['train_seconds']:.1f} s; evaluating on the 10,000 test images")
    x_test = fashion_mnist_features(test_x)
    metrics: dict[str, Any] = evaluate_classifier(MCEngine(model), x_test, test_y, n_samples=args.eval_samples)
    for mode, row in metrics.items():
        log(f"{mode}: accuracy {row['accuracy']:.4f} nll {row['nll']:.4f} ece {row['ece']:.4f} brier {row['brier']:.4f}")
    calibrated = None
    if config.calibrate:
        calibrated, extra = calibrate_and_measure(model, config, features, train_y, x_test, test_y, test_x,
                                                  args.eval_samples, log=log)
        metrics.update(extra)
    name = args.model_name or args.output.name
    parts = split_indices(len(train_y), config)
    card = save_model(model, args.output, {
        "name": name, "version": args.model_version, "task": "classification",
        "description": f"Fashion-MNIST dropout {config.architecture.upper()} classifier ({args.preset} preset).",
        "input_shape": [28, 28], "input_size": 784, "input_range": [0.0, 1.0],
        "normalisation": "pixels scaled to [0, 1] (value / 255), rows of 784 in row-major order; the model "
                         "standardises internally with the training mean and std",
        "class_names": list(FASHION_MNIST_CLASSES), "temperature": float(model.get_buffer("temperature")),
        "training": {**config.relevant(), "train_seconds": round(history["train_seconds"], 1),
                     "final_val_accuracy": history["val_accuracy"][-1]},
        "data": f"Fashion-MNIST (Xiao et al. 2017): of the 60,000 training images, {len(parts['train'])} train the "
                f"network; of the {len(parts['validation'])} held out (the first {config.val_fraction:g} of a permutation "
                f"seeded {config.seed}), {len(parts['temperature'])} fit the temperature and {len(parts['calibration'])} "
                "calibrate the conformal sets, the OOD threshold and abstention; metrics on the 10,000 test images",
        "metrics": {"test_deterministic": metrics.pop("deterministic"),
                    f"test_mc_{args.eval_samples}": metrics.pop("mc"), **metrics, "evaluation_seed": 0},
    }, calibration=calibrated)
    log(f"saved {args.output} (sha256 {card.weights_sha256[:12]}...)")
    return 0
