"""Issue 22 item 2: the logits' energy as one more standardised score in the OOD combination.

    python bench/bench_ood_energy.py --model fashion-cnn-robust [--refit] [--n 10000]

For a calibrated classifier this reads the layers' standardised density scores (the card's density, or with
``--refit`` one fitted to the model's current ``feature_layers()`` as a new calibration fits it) and the energy
``E = -logsumexp(f)`` of the logits ``f`` (the outputs of ``model.logit_layer()``), standardised on the temperature
split as the layers are.  It prints AUROC / FPR at 95% TPR against the 10,000 test images for:

* ``served``: the card's own ``ood_score``;
* ``mean``, ``max``: of the layers' scores alone;
* ``energy``: the energy alone;
* ``mean+energy``, ``max+energy``: the energy taken as one more layer;
* ``clipped mean+energy``: the mean of ``max(z, 0)``, so a layer that finds the input more typical than usual
  cannot cancel one that finds it atypical;

on every proxy set of :mod:`mcdrop.training.proxies` and on the strong (strength 2) copy of every kind of
:mod:`mcdrop.training.shifts`, made from the first ``--n`` test images.  Nothing here changes a model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.nets.models import logit_layer
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.calibrate import features
from mcdrop.training.classifier import split_indices
from mcdrop.training.configs import ClassifierConfig
from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist
from mcdrop.training.proxies import PROXIES, make_proxy
from mcdrop.training.shifts import KINDS, shifted
from mcdrop.uncertainty.metrics import auroc, fpr_at_95_tpr
from mcdrop.uncertainty.ood import fit_feature_density, standardise_density


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn-robust")
    p.add_argument("--refit", action="store_true", help="fit the density to the model's feature_layers() anew")
    p.add_argument("--n", type=int, default=10000, help="test images per shifted set")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    artifact = load_artifact(args.model)
    cal, engine, model = artifact.calibration, MCEngine(artifact.model), artifact.model
    assert cal is not None and cal.density is not None, "a calibrated classifier is needed"
    config = ClassifierConfig.from_card(artifact.card.training)
    train_x, train_y = load_fashion_mnist(None, train=True)
    parts = split_indices(len(train_y), config)
    xf = fashion_mnist_features(train_x)
    logits = logit_layer(model)
    assert logits is not None, "a classifier that names its logits' module is needed"
    layers, densities = cal.density.layers, cal.density.densities
    if args.refit:
        layers = tuple(model.feature_layers())  # type: ignore[operator]
    temp = features(engine, xf[parts["temperature"]], [*layers, logits])
    if args.refit:
        densities = fit_feature_density(features(engine, xf[parts["train"]], list(layers)), train_y[parts["train"]],
                                        temp, 10).densities
    with_energy = standardise_density(layers, densities, temp, energy_layer=logits)  # as a calibration fits it

    def scores(x: torch.Tensor) -> dict[str, np.ndarray]:
        f = features(engine, x, [*dict.fromkeys([*with_energy.captured, *cal.feature_layers])])
        ze = with_energy.layer_scores(f).double()  # the layers' z, then the energy's
        z = ze[:, :-1]
        out = {"served": cal.density.score(f).double(), "mean": z.mean(1), "max": z.amax(1), "energy": ze[:, -1],
               "mean+energy": ze.mean(1), "max+energy": ze.amax(1),
               "clipped mean+energy": ze.clamp(min=0).mean(1)}
        return {k: v.numpy() for k, v in out.items()}

    test_x, _ = load_fashion_mnist(None, train=False)
    images = test_x.float() / 255
    clean = scores(fashion_mnist_features(test_x))
    sets = {name: torch.as_tensor(make_proxy(name, images.numpy())).reshape(-1, 784).float() for name in PROXIES}
    sets.update({f"{kind} 2": shifted(images[:args.n], kind, 2).reshape(-1, 784) for kind in KINDS})
    results = {name: scores(x) for name, x in sets.items()}
    black = scores(torch.zeros(1, 784))
    print(f"{args.model} ({'refitted to ' + ', '.join(layers) if args.refit else 'its card'}'s density; "
          f"energy of {logits}), AUROC / FPR95 against the 10,000 test images; {time.perf_counter() - t0:.0f} s, "
          f"{args.threads} threads\n")
    print("| score | " + " | ".join(sets) + " |")
    print("|---|" + "---:|" * len(sets))
    for label in clean:
        cells = [f"{auroc(clean[label], r[label]):.3f} / {fpr_at_95_tpr(clean[label], r[label]):.3f}"
                 for r in results.values()]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print("\nAn all-black image, as a quantile of the clean test images' scores: " + ", ".join(
        f"{label} {np.mean(clean[label] < black[label][0]):.3f}" for label in clean))


if __name__ == "__main__":
    main()
