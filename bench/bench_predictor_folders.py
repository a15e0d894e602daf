"""What a model folder's calibration costs the service: the same requests through the Predictor for each folder.

    python bench/bench_predictor_folders.py OLD_FOLDER NEW_FOLDER [--n 1000] [--samples 50] [--repeats 7]

Each folder is served by its own in-process :class:`~mcdrop.serving.predictor.Predictor`; one request of the first
``--n`` Fashion-MNIST test images (MC, ``--samples`` passes, seed 1) is timed ``--repeats`` times per folder,
alternating folders, after one warm-up request each; then the OOD score alone (the deterministic features and
the density) on the same rows, ``--repeats`` times per folder.  Prints medians and every time, in seconds.  Used
for the OOD density over four layers against two (BENCHMARKS §6, "Which layers, combined how").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.serving.predictor import Predictor
from mcdrop.training.calibrate import features
from mcdrop.training.data import load_fashion_mnist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, _ = load_fashion_mnist(None, train=False)
    rows = (x[:args.n].float() / 255).reshape(args.n, -1).numpy()
    predictors = {folder: Predictor([folder]) for folder in args.folders}
    for predictor in predictors.values():
        predictor.predict_array(rows[:64], n_samples=args.samples, seed=1)
    times: dict[str, list[float]] = {folder: [] for folder in predictors}
    for _ in range(args.repeats):
        for folder, predictor in predictors.items():
            t = time.perf_counter()
            predictor.predict_array(rows, n_samples=args.samples, seed=1)
            times[folder].append(time.perf_counter() - t)
    for folder, v in times.items():
        print(f"{folder}: request median {np.median(v):.3f} s ({', '.join(f'{t:.3f}' for t in v)})")
    artifacts = {folder: load_artifact(folder) for folder in args.folders}
    engines = {folder: MCEngine(a.model) for folder, a in artifacts.items()}
    x_rows = torch.from_numpy(rows)
    ood: dict[str, list[float]] = {folder: [] for folder in artifacts}
    for _ in range(args.repeats):
        for folder, artifact in artifacts.items():
            calibration = artifact.calibration
            assert calibration is not None and calibration.density is not None, f"{folder} has no OOD density"
            t = time.perf_counter()
            calibration.density.score(features(engines[folder], x_rows, calibration.feature_layers))
            ood[folder].append(time.perf_counter() - t)
    for folder, v in ood.items():
        print(f"{folder}: ood_score alone median {np.median(v):.3f} s ({', '.join(f'{t:.3f}' for t in v)})")


if __name__ == "__main__":
    main()
