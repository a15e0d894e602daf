"""Issue 22 item 2, exploration: which layers' densities, combined how, make the sharpest OOD score?

    python bench/bench_ood_layers.py --model fashion-cnn-robust --layers pixels net.6 net.16 net.17 net.18

For each named layer (a module name of ``model.named_modules()``, or ``pixels`` for the model's standardised
inputs) this fits the served density (:func:`mcdrop.uncertainty.ood.fit_feature_density`, class-conditional
Gaussians in the top ``k`` principal directions) on the training split, standardised on the temperature split,
and writes every layer's standardised score on the 10,000 test images and on each proxy set of
:mod:`mcdrop.training.proxies` to ``--out`` (an ``.npz``).  It prints AUROC / FPR at 95% TPR for each layer
alone and for the ``max`` and the ``mean`` over every subset of two or more layers.
Nothing here changes a shipped model.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.calibrate import features
from mcdrop.training.classifier import split_indices
from mcdrop.training.configs import ClassifierConfig
from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist
from mcdrop.training.proxies import PROXIES, make_proxy
from mcdrop.uncertainty.metrics import auroc, fpr_at_95_tpr
from mcdrop.uncertainty.ood import fit_feature_density


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn-robust")
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    artifact = load_artifact(args.model)
    engine = MCEngine(artifact.model)
    config = ClassifierConfig.from_card(artifact.card.training)
    train_x, train_y = load_fashion_mnist(None, train=True)
    parts = split_indices(len(train_y), config)
    xf = fashion_mnist_features(train_x)
    test_x, _ = load_fashion_mnist(None, train=False)
    test_images = (test_x.float() / 255).numpy()
    hidden = [name for name in args.layers if name != "pixels"]

    def feats(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = features(engine, x, hidden, batch=2000) if hidden else {}
        if "pixels" in args.layers:
            out["pixels"] = x
        return out

    t0 = time.perf_counter()
    train = feats(xf[parts["train"]])
    density = fit_feature_density(train, train_y[parts["train"]], feats(xf[parts["temperature"]]), 10, args.dim)
    del train
    print(f"fitted {', '.join(args.layers)} in {time.perf_counter() - t0:.0f} s", flush=True)
    z: dict[str, dict[str, np.ndarray]] = {}

    def scores(x: torch.Tensor) -> dict[str, np.ndarray]:
        layer = density.layer_scores(feats(x)).double().numpy()  # (B, L), standardised on the temperature split
        return {name: layer[:, i] for i, name in enumerate(density.layers)}

    z["clean"] = scores(fashion_mnist_features(test_x))
    for proxy in PROXIES:
        z[proxy] = scores(torch.as_tensor(make_proxy(proxy, test_images)).reshape(-1, 784).float())
    if args.out:
        np.savez(args.out, **{f"{s}|{name}": v for s, d in z.items() for name, v in d.items()})

    combos: list[tuple[str, tuple[str, ...]]] = [(name, (name,)) for name in args.layers]
    for r in range(2, len(args.layers) + 1):
        for subset in itertools.combinations(args.layers, r):
            combos += [(f"max({','.join(subset)})", subset), (f"mean({','.join(subset)})", subset)]

    def combined(d: dict[str, np.ndarray], label: str, subset: tuple[str, ...]) -> np.ndarray:
        stack = np.stack([d[name] for name in subset], 1)
        return stack.mean(1) if label.startswith("mean") else stack.max(1)

    print(f"\n{args.model}, k = {args.dim}: AUROC / FPR95 of each proxy against the 10,000 test images")
    print("| score | " + " | ".join(PROXIES) + " |")
    print("|---|" + "---:|" * len(PROXIES))
    for label, subset in combos:
        clean = combined(z["clean"], label, subset)
        cells = []
        for proxy in PROXIES:
            other = combined(z[proxy], label, subset)
            cells.append(f"{auroc(clean, other):.3f} / {fpr_at_95_tpr(clean, other):.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
