"""Issue 22: what the answered errors under a strong elastic distortion look like, for a blind reading.

    python bench/blind_errors.py --model fashion-cnn-robust --n 4000 --out bench/results/blind-errors-fashion-cnn-robust.png

Takes the first ``--n`` test images, distorted as :mod:`mcdrop.training.shifts` makes ``elastic 2``, and the
service's default decision on them (MC N = 50, seed 0).  Draws every image it answers wrongly and as many it
answers rightly (chosen with a fixed seed), shuffled, numbered, without labels, to ``--out``; the key (true and
predicted class per number) goes to ``--out`` + ``.key.json``.  Label the grid before opening the key.
"""

from __future__ import annotations

import argparse
import json

import matplotlib
import numpy as np
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.data import load_fashion_mnist
from mcdrop.training.shifts import default_answered, shifted, signals

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn-robust")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--out", default="blind-errors.png")
    args = p.parse_args()
    torch.set_num_threads(2)
    artifact = load_artifact(args.model)
    assert artifact.calibration is not None, "a calibrated classifier is needed"
    x_test, y_test = load_fashion_mnist(None, train=False)
    images, labels = x_test[:args.n].float() / 255, y_test[:args.n].numpy()
    x = shifted(images, "elastic", 2)
    sig = signals(MCEngine(artifact.model), artifact.calibration, x.reshape(args.n, -1), 50, 0)
    answered, wrong = default_answered(artifact.calibration, sig), sig["pred"] != labels
    rng = np.random.default_rng(7)
    errors = np.flatnonzero(answered & wrong)
    right = rng.choice(np.flatnonzero(answered & ~wrong), len(errors), replace=False)
    order = rng.permutation(np.r_[errors, right])
    names = artifact.card.class_names or [str(c) for c in range(int(labels.max()) + 1)]
    key = [{"number": j, "image": int(i), "true": names[labels[i]], "predicted": names[sig["pred"][i]]}
           for j, i in enumerate(order)]
    with open(args.out + ".key.json", "w") as f:
        json.dump(key, f, indent=1)
    cols = 7
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.6), squeeze=False)
    for j, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if j < len(order):
            ax.imshow(x[order[j]], cmap="gray")
            ax.set_title(str(j), fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"{len(errors)} answered wrongly of {int(answered.sum())} answered; grid {args.out}, key {args.out}.key.json")


if __name__ == "__main__":
    main()
