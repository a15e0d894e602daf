"""Small models written to a temporary directory, so tests do not depend on trained artifacts."""

from __future__ import annotations

from pathlib import Path

import torch

from mcdrop import DropoutMLP
from mcdrop.nets.artifacts import save_model


def write_tiny_models(directory: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    cls = DropoutMLP(4, [16], 3, dropout=0.3)
    reg = DropoutMLP(3, [16], 1, dropout=0.2, head="homoscedastic", tau=4.0)
    paths = {"tiny-cls": directory / "tiny-cls", "tiny-reg": directory / "tiny-reg"}
    save_model(
        cls,
        paths["tiny-cls"],
        {
            "name": "tiny-cls",
            "version": "1",
            "task": "classification",
            "input_shape": [4],
            "input_size": 4,
            "normalisation": "none",
            "class_names": ["a", "b", "c"],
        },
    )
    save_model(
        reg,
        paths["tiny-reg"],
        {
            "name": "tiny-reg",
            "version": "1",
            "task": "homoscedastic",
            "input_shape": [3],
            "input_size": 3,
            "normalisation": "none",
            "tau": 4.0,
        },
    )
    return paths


def blobs(n: int, seed: int, classes: int = 4, dim: int = 8, shift: float = 0.6):
    """Features in [0, 1]: class k lights up feature block k by ``shift``, plus uniform noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    x = 0.3 * torch.rand(n, dim, generator=g)
    block = dim // classes
    for k in range(classes):
        x[y == k, k * block:(k + 1) * block] += shift
    return x, y


def write_calibrated_model(directory: Path) -> Path:
    """A small classifier trained on blobs, with an OOD density, conformal scores and abstention data."""
    from mcdrop.training.calibrate import calibrate_classifier
    from mcdrop.training.classifier import ClassifierConfig, split_indices, train_classifier

    x, y = blobs(1600, seed=0, shift=0.1)  # overlapping classes: uncertain inputs exist
    config = ClassifierConfig(hidden=[32, 32], dropout=[0.2, 0.2], epochs=4, batch_size=32, lr=0.1, val_fraction=0.5,
                              calibrate=True, calibration_samples=10)
    model, _ = train_classifier(config, x, y, n_classes=4)
    parts = split_indices(len(y), config)
    calibration = calibrate_classifier(model, train=(x[parts["train"]], y[parts["train"]]),
                                       temperature=(x[parts["temperature"]], y[parts["temperature"]]),
                                       calibration=(x[parts["calibration"]], y[parts["calibration"]]), n_classes=4,
                                       class_names=["a", "b", "c", "d"], n_samples=20, dim=8, default_risk=0.1)
    path = directory / "tiny-calibrated"
    save_model(model, path, {"name": "tiny-calibrated", "version": "1", "task": "classification", "input_shape": [8],
                             "input_size": 8, "normalisation": "none", "class_names": ["a", "b", "c", "d"]},
               calibration=calibration)
    return path
