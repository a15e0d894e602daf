"""OOD benchmark: every score against every proxy set, and the held-out-class protocol.

    python bench/bench_ood.py [--model fashion-mnist] [--held-out 8 1] [--threads 2] [--out results.md]

1. The model's scores (the density's ``ood_score``, MC mutual information, MC predictive entropy, MC max
   probability, deterministic entropy and max probability) on the Fashion-MNIST test images against each
   proxy set of :mod:`mcdrop.training.proxies`: AUROC / FPR at 95% TPR.
2. Held-out class: the reference recipe (784-256-256-10, dropout 0.2/0.5, 10 epochs) trained and calibrated
   without class k, then asked to tell the test images of class k from the test images of the other classes.
   The calibration is today's default (the mean over every hidden layer's pre-activation and output); the
   figures in BENCHMARKS §6 were measured with the maximum over the two ReLUs, before that default.
"""

from __future__ import annotations

import argparse
import time

import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.calibrate import calibrate_classifier, ood_report
from mcdrop.training.classifier import ClassifierConfig, split_indices, train_classifier
from mcdrop.training.data import FASHION_MNIST_CLASSES, fashion_mnist_features, load_fashion_mnist
from mcdrop.training.proxies import PROXIES, make_proxy

SCORES = ("ood_score", "mc_mutual_information", "mc_predictive_entropy", "mc_max_probability", "deterministic_entropy",
          "deterministic_max_probability")


def table(report: dict, title: str) -> list[str]:
    lines = [f"**{title}** (AUROC / FPR at 95% TPR)", "", "| set | " + " | ".join(SCORES) + " |",
             "|---|" + "---:|" * len(SCORES)]
    for name, row in report.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s]['auroc']:.3f} / {row[s]['fpr95']:.3f}" if s in row else "-"
                                                for s in SCORES) + " |")
    return lines


def held_out_class(k: int, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> dict:
    keep = y != k
    config = ClassifierConfig(calibrate=True)  # the reference recipe, plus temperature and calibration splits
    xs, ys = x[keep], y[keep]
    model, _ = train_classifier(config, xs, ys, n_classes=10)
    parts = split_indices(len(ys), config)
    classes = [c for c in range(10) if c != k]
    relabel = torch.full((10,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(9)
    calibrated = calibrate_classifier(model, train=(xs[parts["train"]], relabel[ys[parts["train"]]]),
                                      temperature=(xs[parts["temperature"]], ys[parts["temperature"]]),
                                      calibration=(xs[parts["calibration"]], ys[parts["calibration"]]), n_classes=9)
    return ood_report(MCEngine(model), calibrated, xt[yt != k], {FASHION_MNIST_CLASSES[k]: xt[yt == k]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fashion-mnist")
    parser.add_argument("--held-out", type=int, nargs="*", default=[8, 1], help="classes to hold out (8 Bag, 1 Trouser)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_fashion_mnist(train=True)
    xt_images, yt = load_fashion_mnist(train=False)
    x, xt = fashion_mnist_features(x), fashion_mnist_features(xt_images)
    artifact = load_artifact(args.model)
    images = (xt_images.numpy() / 255.0).astype("float32")
    proxies = {name: torch.from_numpy(make_proxy(name, images)).reshape(-1, 784) for name in PROXIES}
    start = time.perf_counter()
    lines = table(ood_report(MCEngine(artifact.model), artifact.calibration, xt, proxies),
                  f"{args.model}: Fashion-MNIST test images against each proxy set (2,000 images each; digits: 1,797)")
    for k in args.held_out:
        lines += ["", *table(held_out_class(k, x, y, xt, yt), f"reference recipe trained without class {k} "
                             f"({FASHION_MNIST_CLASSES[k]}): its test images against the other classes'")]
    lines += ["", f"{time.perf_counter() - start:.0f} s, {torch.get_num_threads()} threads"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
