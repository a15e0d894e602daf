"""Issue 22 item 2, exploration: does a density over the pixels themselves sharpen the OOD score on near shift?

    python bench/bench_ood_pixels.py [--model fashion-mnist] [--threads 1]

The served ``ood_score`` combines the model's hidden layers as its card says (:mod:`mcdrop.uncertainty.ood`;
``max_l z_l`` when this was run).  This fits the same class-conditional Gaussian density to the training
images' pixels projected on their top ``k`` principal directions (``k`` in 32, 64, 128), standardises its
negative log density on the temperature split as the layers are, and reports, for each proxy set of
:mod:`mcdrop.training.proxies` against the 10,000 test images: AUROC / the share of proxy images passing the
95%-of-clean threshold, for the served score (``base``), the pixel density alone (``px<k>``) and the maximum of
the two (``max+px<k>``).  Nothing here changes a shipped model.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.calibrate import features
from mcdrop.training.classifier import split_indices
from mcdrop.training.configs import ClassifierConfig
from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist
from mcdrop.training.proxies import PROXIES, make_proxy
from mcdrop.uncertainty.ood import fit_layer_density

DIMS = (32, 64, 128)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-mnist")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    artifact = load_artifact(args.model)
    cal, engine = artifact.calibration, MCEngine(artifact.model)
    config = ClassifierConfig.from_card(artifact.card.training)
    train_x, train_y = load_fashion_mnist(None, train=True)
    parts = split_indices(len(train_y), config)
    xf = fashion_mnist_features(train_x)
    test_x, _ = load_fashion_mnist(None, train=False)
    densities = {k: fit_layer_density(xf[parts["train"]], train_y[parts["train"]], 10, k) for k in DIMS}

    def raw(x: torch.Tensor) -> dict[str, np.ndarray]:
        out = {"base": cal.density.score(features(engine, x, cal.feature_layers)).double().numpy()}
        out.update({f"px{k}": d.nll(x).double().numpy() for k, d in densities.items()})
        return out

    held = raw(xf[parts["temperature"]])
    standard = {name: (v.mean(), v.std()) for name, v in held.items()}

    def scores(x: torch.Tensor) -> dict[str, np.ndarray]:
        r = raw(x)
        out = {"base": r["base"]}
        for k in DIMS:
            z = (r[f"px{k}"] - standard[f"px{k}"][0]) / standard[f"px{k}"][1]
            out[f"px{k}"], out[f"max+px{k}"] = z, np.maximum(r["base"], z)
        return out

    clean = scores(fashion_mnist_features(test_x))
    print(f"{args.model}: AUROC / share passing the 95% threshold, against the 10,000 test images")
    print("| set | " + " | ".join(clean) + " |")
    print("|---|" + "---:|" * len(clean))
    test_images = (test_x.float() / 255).numpy()
    for proxy in PROXIES:
        other = scores(torch.as_tensor(make_proxy(proxy, test_images)).reshape(-1, 784).float())
        cells = []
        for name in clean:
            labels = np.r_[np.zeros(len(clean[name])), np.ones(len(other[name]))]
            auroc = roc_auc_score(labels, np.r_[clean[name], other[name]])
            passing = float((other[name] <= np.quantile(clean[name], 0.95)).mean())
            cells.append(f"{auroc:.3f} / {passing:.3f}")
        print(f"| {proxy} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
