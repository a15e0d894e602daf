"""Classifier training: reproducible for a seed, leaves the global RNG alone, learns, calibrates."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mcdrop.sampling.engine import MCEngine
from mcdrop.training.classifier import ClassifierConfig, fit_temperature, train_classifier
from mcdrop.uncertainty.prediction import predict
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


def test_augment_flips_half_the_rows_and_shifts_uniformly_within_two_pixels():
    """One bright pixel at (5, 5) of a 10x10 image: each augmented copy has it at (5 + dy, 5 or 4 -/+ dx) with
    dx, dy uniform on -2..2 (chi-square test over the 25 offsets) and a left-right flip half the time."""
    from mcdrop.training.classifier import augment

    n = 5000
    x = torch.zeros(n, 100)
    x[:, 5 * 10 + 5] = 1.0
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = augment(x)
    assert out.shape == x.shape and torch.equal(out.sum(1), torch.ones(n))  # never shifted off a 2-pixel margin
    pos = out.argmax(1)
    r, c = pos // 10, pos % 10
    # rows 5 + dy in 3..7; columns 5 + dx in 3..7 unflipped, 4 + dx in 2..6 flipped
    assert bool(((r >= 3) & (r <= 7)).all()) and bool(((c >= 2) & (c <= 7)).all())
    assert stats.chisquare(torch.bincount(r - 3, minlength=5).numpy()).pvalue > ALPHA
    for edge in (2, 7):  # flipped with dx = -2, or unflipped with dx = +2: probability 1/2 * 1/5 each
        assert stats.binomtest(int((c == edge).sum()), n, 0.1).pvalue > ALPHA


def test_cnn_config_trains_a_dropout_cnn_that_the_engine_samples():
    from mcdrop.nets.models import DropoutCNN

    g = torch.Generator().manual_seed(0)
    y = torch.randint(2, (200,), generator=g)
    x = 0.2 * torch.rand(200, 64, generator=g)
    x.view(200, 8, 8)[y == 1, :, :4] += 0.6  # class 1: left half bright
    config = ClassifierConfig(architecture="cnn", channels=[4, 8], channel_dropout=[0.1, 0.1], hidden=[16],
                              dropout=[0.3], epochs=8, batch_size=32, lr=0.05, momentum=0.9, val_fraction=0.25,
                              augment=False)
    model, history = train_classifier(config, x, y, n_classes=2)
    assert isinstance(model, DropoutCNN) and model.image_shape == [8, 8]
    assert history["val_accuracy"][-1] > 0.9  # the halves are far apart; chance is 0.5
    assert MCEngine(model).sample(x[:3], 5, seed=0).shape == (5, 3, 2)


@pytest.mark.parametrize(("fields", "message"), [
    ({"architecture": "rnn"}, "architecture"),
    ({"architecture": "cnn", "input_dropout": 0.1}, "input_dropout"),
    ({"channels": [8, 16], "channel_dropout": [0.1]}, "channel_dropout"),
    ({"channels": []}, "channels"),
])
def test_cnn_fields_are_checked(fields, message):
    from mcdrop.training.configs import ConfigError

    with pytest.raises(ConfigError, match=message):
        ClassifierConfig(**fields)
