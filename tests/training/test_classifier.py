"""Classifier training: reproducible for a seed, leaves the global RNG alone, learns, calibrates."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mcdrop.core.engine import MCEngine
from mcdrop.core.prediction import predict
from mcdrop.training.classifier import ClassifierConfig, fit_temperature, train_classifier
from tests.conftest import ALPHA


def blobs(n: int, seed: int, classes: int = 4, dim: int = 12, shift: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Features in [0, 1]: class k lights up feature block k by ``shift``, plus uniform noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    x = 0.3 * torch.rand(n, dim, generator=g)
    block = dim // classes
    for k in range(classes):
        x[y == k, k * block:(k + 1) * block] += shift
    return x, y


CONFIG = {"hidden": [32, 32], "dropout": [0.2, 0.2], "epochs": 6, "batch_size": 32, "lr": 0.1, "val_fraction": 0.25}


def test_same_seed_same_weights_and_global_rng_untouched():
    x, y = blobs(400, seed=0)
    before = torch.get_rng_state()
    a, history = train_classifier(ClassifierConfig(**CONFIG), x, y, n_classes=4)
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = train_classifier(ClassifierConfig(**CONFIG), x, y, n_classes=4)
    c, _ = train_classifier(ClassifierConfig(**CONFIG, seed=1), x, y, n_classes=4)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], rtol=0, atol=0, equal_nan=True, msg=name)
    assert not torch.equal(a.state_dict()["net.0.weight"], c.state_dict()["net.0.weight"])
    assert len(history["loss"]) == len(history["val_accuracy"]) == CONFIG["epochs"] and not a.training


def test_learns_far_above_chance():
    """On fresh data, accuracy must beat chance (1/4) beyond the binomial tail at ALPHA."""
    x, y = blobs(400, seed=0)
    model, _ = train_classifier(ClassifierConfig(**CONFIG), x, y, n_classes=4)
    xt, yt = blobs(200, seed=1)
    correct = int((predict(MCEngine(model), xt, mode="mc", n_samples=20, seed=0).summary.probabilities.argmax(1) == yt).sum())
    assert stats.binomtest(correct, len(yt), 0.25, alternative="greater").pvalue < ALPHA


def test_temperature_minimises_the_validation_nll_of_the_mc_mean():
    x, y = blobs(300, seed=2, shift=0.1)  # overlapping classes: the best temperature is interior
    model, _ = train_classifier(ClassifierConfig(**{**CONFIG, "epochs": 3}), x, y, n_classes=4)
    logits = MCEngine(model).sample(x, 30, seed=0).double()

    def nll(t: float) -> float:
        log_p = torch.logsumexp(torch.log_softmax(logits / t, -1), 0) - math.log(30)
        return float(-log_p[torch.arange(len(y)), y].mean())

    t = fit_temperature(model, x, y, 30, seed=0)
    assert 0.05 < t < 20
    for other in (t * 0.9, t * 1.1, 1.0):
        assert nll(t) <= nll(other) + 1e-9


def test_calibrate_stores_the_temperature_in_the_model():
    x, y = blobs(300, seed=3)
    model, _ = train_classifier(ClassifierConfig(**{**CONFIG, "epochs": 2}, calibrate=True,
                                                 calibration_samples=10), x, y, n_classes=4)
    assert float(model.temperature) != pytest.approx(1.0, abs=1e-6)
