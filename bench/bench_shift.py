"""Abstention under covariate shift (issue 22, items 1-2, exploration): accuracy, share answered and error among
answered on shifted copies of the Fashion-MNIST test images, for the shipped rule and a combined one.

Shifts (torchvision transforms of the test images, two strengths each): design kinds, looked at while choosing the
combined rule: translation, blur, additive noise; held-out kinds, measured once: scale, occlusion, contrast;
rotation (held out from the rule, in the ``cnn-robust`` preset's training augmentation since its version 2);
*unseen* kinds, outside both the combined rule's design and that augmentation (:mod:`mcdrop.training.shift_augment`,
which covers the seven kinds above): pixelation, a gamma change, a shear, an elastic distortion.

Rules, both calibrated on clean held-out training images only (never on shifted ones):

* ``shipped``: abstain when ``ood_score`` is above the card's threshold (95% of clean images pass) or
  ``1 - confidence`` is above the card's threshold for a 2% selective risk;
* ``combined``: each signal s_k in (ood_score, MC mutual information, 1 - confidence) is turned into its
  percentile F_k(s_k) among the clean *temperature* rows; the input's uncertainty is max_k F_k (its least typical
  signal); the threshold on it is the largest whose Clopper-Pearson 95% bound on the error among answered
  *calibration* rows is <= 2% (:func:`mcdrop.uncertainty.selective.risk_threshold`).

Run: ``flock /tmp/mcdrop-cpu.lock .venv/bin/python bench/bench_shift.py --model fashion-mnist --n 10000``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.classifier import split_indices
from mcdrop.training.configs import ClassifierConfig
from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist
from mcdrop.training.shifts import KINDS, default_answered, kind_of, shifted, signals
from mcdrop.uncertainty import selective


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="fashion-mnist", help="a bundled model's name or a model folder")
    p.add_argument("--n", type=int, default=10000, help="test images per set")
    p.add_argument("--samples", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    artifact = load_artifact(args.model)
    cal, engine, card = artifact.calibration, MCEngine(artifact.model), artifact.card
    config = ClassifierConfig.from_card(card.training)
    train_x, train_y = load_fashion_mnist(None, train=True)
    parts = split_indices(len(train_y), config)
    xf = fashion_mnist_features(train_x)
    temp = signals(engine, cal, xf[parts["temperature"]], args.samples, 0)
    calib = signals(engine, cal, xf[parts["calibration"]], args.samples, 0)
    y_cal = train_y[parts["calibration"]].numpy()
    keys = ("ood", "mi", "unc")
    ref = {k: np.sort(temp[k]) for k in keys}

    def combined(sig: dict[str, np.ndarray]) -> np.ndarray:
        return np.max([np.searchsorted(ref[k], sig[k], side="right") / len(ref[k]) for k in keys], axis=0)

    t_comb = selective.risk_threshold(combined(calib), (calib["pred"] != y_cal).astype(float), 0.02, 0.05)
    x_test, y_test = load_fashion_mnist(None, train=False)
    images, labels = x_test[:args.n].float() / 255, y_test[:args.n].numpy()
    sets = [("clean", images)] + [(f"{k} {s}", shifted(images, k, s)) for k in KINDS for s in (1, 2)]
    print(f"{card.name}: MC N={args.samples}, {args.n} test images per set; combined threshold {t_comb:.4f} "
          f"(max percentile among clean rows)")
    print("| set | kind | accuracy | shipped: answered | shipped: error among answered | combined: answered | "
          "combined: error among answered |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, x in sets:
        sig = signals(engine, cal, x.reshape(len(x), -1), args.samples, 0)
        wrong = sig["pred"] != labels
        rules = {"shipped": default_answered(cal, sig), "combined": combined(sig) <= t_comb}
        cells = []
        for answered in rules.values():
            err = wrong[answered].mean() if answered.any() else float("nan")
            cells += [f"{answered.mean():.1%}", f"{err:.1%} ({int(wrong[answered].sum())}/{int(answered.sum())})"]
        kind = kind_of(name)
        print(f"| {name} | {kind} | {1 - wrong.mean():.3f} | " + " | ".join(cells) + " |")
    print(f"({time.perf_counter() - start:.0f} s, torch threads 2)")


if __name__ == "__main__":
    main()
