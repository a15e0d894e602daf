"""``mcdrop train fashion-mnist``: train a dropout MLP classifier and save it with its model card."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from mcdrop.cli.common import CLIError, is_terminal, log, setup_torch

PRESETS: dict[str, dict[str, Any]] = {
    "reference": {},  # the textbook recipe: 784-256-256-10, dropout 0.2/0.5, SGD 0.1, batch 256, 10 epochs
    "tuned": {"hidden": [1024, 1024], "dropout": [0.3, 0.3], "input_dropout": 0.1, "optimizer": "sgd", "lr": 0.05,
              "momentum": 0.9, "schedule": "cosine", "epochs": 40, "batch_size": 128, "calibrate": True},
}


def add_parser(sub: Any, name: str) -> None:
    from mcdrop.train import ClassifierConfig

    p = sub.add_parser(name, help="train a model", description=__doc__)
    p.add_argument("dataset", choices=["fashion-mnist"], help="what to train on")
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference", help="starting configuration")
    p.add_argument("--config", type=Path, help="JSON file of config fields (override the preset)")
    for f in fields(ClassifierConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("list[int]", "list[float]"):
            kind = int if f.type == "list[int]" else float
            p.add_argument(flag, type=kind, nargs="+", help=f"config field {f.name}")
        elif f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"config field {f.name}")
        else:
            p.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), help=f"config field {f.name}")
    p.add_argument("--output", "-o", type=Path, required=True, help="model directory to write")
    p.add_argument("--name", help="model name in the card (default: the directory name)")
    p.add_argument("--data-root", help="data root (default $MCDROP_DATA or ../shared/data)")
    p.add_argument("--eval-samples", type=int, default=50, help="MC passes for the card's test metrics")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mcdrop.artifacts import save_model
    from mcdrop.data import FASHION_MNIST_CLASSES, DataNotFoundError, fashion_mnist_features, load_fashion_mnist
    from mcdrop.engine import MCEngine
    from mcdrop.evaluation import evaluate_classifier
    from mcdrop.train import ClassifierConfig, train_classifier

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
    except TypeError as err:
        raise CLIError(f"--config: {err}", 2) from err
    try:
        train_x, train_y = load_fashion_mnist(args.data_root, train=True)
        test_x, test_y = load_fashion_mnist(args.data_root, train=False)
    except DataNotFoundError as err:
        raise CLIError(str(err)) from err
    log(f"training {config.as_dict()}")
    model, history = train_classifier(config, fashion_mnist_features(train_x), train_y, log=log,
                                      progress=is_terminal())
    log(f"trained in {history['train_seconds']:.1f} s; evaluating on the 10,000 test images")
    metrics = evaluate_classifier(MCEngine(model), fashion_mnist_features(test_x), test_y, n_samples=args.eval_samples)
    for mode, row in metrics.items():
        log(f"{mode}: accuracy {row['accuracy']:.4f} nll {row['nll']:.4f} ece {row['ece']:.4f} brier {row['brier']:.4f}")
    name = args.name or args.output.name
    card = save_model(model, args.output, {
        "name": name, "version": "1", "task": "classification",
        "description": f"Fashion-MNIST dropout MLP classifier ({args.preset} preset).",
        "input_shape": [28, 28], "input_size": 784,
        "normalisation": "pixels scaled to [0, 1] (value / 255), rows of 784 in row-major order; the model "
                         "standardises internally with the training mean and std",
        "class_names": list(FASHION_MNIST_CLASSES), "temperature": float(model.temperature),
        "training": {**config.as_dict(), "train_seconds": round(history["train_seconds"], 1),
                     "final_val_accuracy": history["val_accuracy"][-1]},
        "data": "Fashion-MNIST (Xiao et al. 2017), 60,000 training images (last 10% of a seeded permutation held "
                "out for validation); metrics on the 10,000 test images",
        "metrics": {"test_deterministic": metrics["deterministic"],
                    f"test_mc_{args.eval_samples}": metrics["mc"], "evaluation_seed": 0},
    })
    log(f"saved {args.output} (sha256 {card.weights_sha256[:12]}...)")
    return 0
