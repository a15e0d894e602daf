"""Predictions: modes, summaries, adaptive sampling and its minimum, features."""

import pytest
import torch

from mcdrop import DropoutMLP, MCEngine, predict
from mcdrop.request import MIN_ADAPTIVE_SAMPLES
from tests.tolerances import assert_probabilities_close


def mlp(seed: int = 0) -> DropoutMLP:
    torch.manual_seed(seed)
    return DropoutMLP(20, [32, 32], 4, dropout=[0.2, 0.5])


def test_deterministic_and_mc_summaries():
    engine, x = MCEngine(mlp()), torch.randn(5, 20)
    det = predict(engine, x, mode="deterministic")
    assert det.seed is None and det.summary.mutual_information is None and (det.summary.n_samples == 1).all()
    assert torch.allclose(det.summary.probabilities, torch.softmax(engine.deterministic(x), -1))
    mc = predict(engine, x, n_samples=30, seed=2, return_samples=True)
    assert mc.seed == 2 and mc.samples.shape == (30, 5, 4) and (mc.summary.mutual_information >= 0).all()
    unseeded = predict(engine, x, n_samples=3)
    assert isinstance(unseeded.seed, int)  # drawn once, returned


def test_adaptive_sampling_reaches_tolerance_and_reports_n():
    engine = MCEngine(mlp())
    x = torch.randn(6, 20)
    result = predict(engine, x, n_samples=16, tolerance=0.01, max_samples=4096, seed=4, return_samples=True)
    used = result.summary.n_samples
    assert (used >= 16).all() and (used <= 4096).all()
    stderr = result.summary.probability_stderr.amax(-1)
    assert ((stderr <= 0.01) | (used == 4096)).all()
    # Adaptive rows are the first n samples of the fixed-N call with the same seed.
    row, n = 0, int(used[0])
    fixed = predict(engine, x, n_samples=n, seed=4)
    assert_probabilities_close(result.summary.probabilities[row], fixed.summary.probabilities[row])


def test_adaptive_needs_a_minimum_before_it_may_stop():
    """One pass has a standard error of 0 and used to stop at once; now the first round has at least the minimum."""
    result = predict(MCEngine(mlp()), torch.randn(3, 20), n_samples=1, tolerance=1e-6, max_samples=64, seed=0)
    assert (result.summary.n_samples >= MIN_ADAPTIVE_SAMPLES).all()
    assert (result.summary.probability_stderr.amax(-1) > 0).all()
    with pytest.raises(ValueError, match="at least the first round"):
        predict(MCEngine(mlp()), torch.randn(3, 20), n_samples=1, tolerance=0.1, max_samples=4, seed=0)


def test_adaptive_respects_cap():
    result = predict(MCEngine(mlp()), torch.randn(2, 20), n_samples=8, tolerance=1e-9, max_samples=64, seed=0)
    assert result.summary.n_samples.tolist() == [64, 64]


def test_regression_homoscedastic_uses_tau():
    torch.manual_seed(0)
    model = DropoutMLP(3, [16], 1, head="homoscedastic", tau=4.0, dropout=0.3)
    s = predict(MCEngine(model), torch.randn(5, 3), n_samples=50, seed=0, level=0.9).summary
    assert torch.allclose(s.aleatoric_variance, torch.full((5,), 0.25))
    assert torch.allclose(s.variance, s.aleatoric_variance + s.epistemic_variance)
    assert (s.interval_low < s.mean).all() and (s.mean < s.interval_high).all()


def test_features_come_from_the_deterministic_pass_in_both_modes():
    model, x = mlp(), torch.randn(4, 20)
    engine = MCEngine(model)
    det = predict(engine, x, mode="deterministic", features=model.feature_layers())
    mc = predict(engine, x, n_samples=5, seed=0, features=model.feature_layers())
    assert list(det.features) == ["net.0", "net.1", "net.3", "net.4"]  # each Linear and its ReLU
    for name in det.features:
        assert torch.equal(det.features[name], mc.features[name])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mode": "bayes"}, "is not a valid Mode"), ({"tolerance": -1.0}, "tolerance has to be a positive")],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict(MCEngine(mlp()), torch.randn(2, 20), **kwargs)


def test_models_without_a_head_need_a_task():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="needs task="):
        predict(MCEngine(model), torch.randn(2, 3))
    assert predict(MCEngine(model), torch.randn(2, 3), task="classification", seed=0).summary.probabilities.shape == (2, 2)
