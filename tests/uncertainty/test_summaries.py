"""Uncertainty math against hand-computed values and scipy."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mcdrop.uncertainty import summaries as U


def log_probs(p):
    return torch.tensor(p, dtype=torch.float64).log()


def test_identical_samples_have_zero_mutual_information():
    lp = log_probs([[[0.7, 0.2, 0.1]]] * 5)  # (5, 1, 3)
    assert U.mutual_information(lp).item() == pytest.approx(0.0, abs=1e-12)
    assert U.variation_ratio(lp).item() == 0.0
    assert U.predictive_entropy(lp).item() == pytest.approx(stats.entropy([0.7, 0.2, 0.1]))


def test_two_disagreeing_one_hot_samples_give_ln2():
    lp = log_probs([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert U.mutual_information(lp).item() == pytest.approx(math.log(2))
    assert U.expected_entropy(lp).item() == 0.0
    assert U.variation_ratio(lp).item() == pytest.approx(0.5)
    assert not torch.isnan(U.predictive_entropy(lp)).any()


def test_hand_computed_classification_summary():
    probs = torch.tensor([[[0.9, 0.1]], [[0.6, 0.4]], [[0.3, 0.7]]], dtype=torch.float64)
    s = U.summarize_classification(probs.log())
    mean = torch.tensor([0.6, 0.4], dtype=torch.float64)
    assert torch.allclose(s.probabilities[0], mean)
    h_mean = stats.entropy(mean.numpy())
    h_each = [stats.entropy(p[0].numpy()) for p in probs]
    assert s.predictive_entropy.item() == pytest.approx(h_mean)
    assert s.expected_entropy.item() == pytest.approx(sum(h_each) / 3)
    assert s.mutual_information.item() == pytest.approx(h_mean - sum(h_each) / 3)
    assert s.variation_ratio.item() == pytest.approx(1 - 2 / 3)
    assert s.predicted_class.item() == 0 and s.confidence.item() == pytest.approx(0.6)
    # each class's probabilities are three values 0.3 apart (0.9, 0.6, 0.3 and 0.1, 0.4, 0.7): sample sd 0.3
    assert s.probability_std[0].tolist() == pytest.approx([0.3, 0.3], abs=1e-12)
    assert s.probability_stderr[0].tolist() == pytest.approx([0.3 / math.sqrt(3)] * 2, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 10_000), st.floats(0.1, 60.0))
def test_mutual_information_nonnegative_and_bounded(s, c, seed, scale):
    logits = torch.randn(s, 3, c, generator=torch.Generator().manual_seed(seed)) * scale
    lp = torch.log_softmax(logits, -1)
    mi = U.mutual_information(lp)
    assert torch.all(mi >= 0) and torch.all(mi <= U.predictive_entropy(lp) + 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_give_no_nan(dtype):
    logits = torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]]], dtype=dtype)
    s = U.summarize_classification(logits)
    for name in ("probabilities", "predictive_entropy", "expected_entropy", "mutual_information", "probability_std"):
        assert torch.isfinite(getattr(s, name)).all(), name
    assert s.mutual_information.item() == pytest.approx(math.log(2), rel=1e-5)


def test_deterministic_summary_leaves_sampling_fields_empty():
    s = U.summarize_classification(torch.randn(1, 4, 3), sampled=False)
    assert s.mutual_information is None and s.variation_ratio is None and s.probability_std is None
    assert s.n_samples.tolist() == [1] * 4


def test_regression_law_of_total_variance():
    means = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)  # (S=2, B=2)
    variances = torch.tensor([[0.5, 1.0], [1.5, 1.0]], dtype=torch.float64)
    r = U.summarize_regression(means, variances, level=0.9)
    assert r.mean.tolist() == [2.0, 0.0]
    assert r.epistemic_variance.tolist() == [1.0, 0.0]
    assert r.aleatoric_variance.tolist() == [1.0, 1.0]
    assert r.variance.tolist() == [2.0, 1.0]
    assert r.mean_stderr[0].item() == pytest.approx(math.sqrt(2) / math.sqrt(2))
    lo, hi = stats.norm.interval(0.9)  # row 1 is one Gaussian N(0, 1)
    assert r.interval_low[1].item() == pytest.approx(lo, abs=1e-9)
    assert r.interval_high[1].item() == pytest.approx(hi, abs=1e-9)


def test_mixture_interval_matches_scipy_root():
    means = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64)
    var = 0.25
    low, high = U.mixture_interval(means, var, 0.8)

    def cdf(q):
        return sum(stats.norm.cdf(q, m, math.sqrt(var)) for m in (-1.0, 0.5, 2.0)) / 3

    from scipy.optimize import brentq

    assert low.item() == pytest.approx(brentq(lambda q: cdf(q) - 0.1, -10, 10), abs=1e-9)
    assert high.item() == pytest.approx(brentq(lambda q: cdf(q) - 0.9, -10, 10), abs=1e-9)


def test_homoscedastic_constant_noise_and_deterministic():
    r = U.summarize_regression(torch.tensor([[2.0, 4.0]]), 0.25, sampled=False)
    assert r.epistemic_variance is None and r.mean_stderr is None
    assert r.variance.tolist() == [0.25, 0.25]
    assert r.std.tolist() == [0.5, 0.5]


def test_invalid_level():
    with pytest.raises(ValueError, match=r"interval level has to be in \(0, 1\)"):
        U.summarize_regression(torch.zeros(2, 1), 1.0, level=1.5)


def test_a_summary_of_the_other_kind_is_refused_by_name():
    from mcdrop.errors import ParameterError

    cls = U.summarize(torch.zeros(4, 3, 2), "classification")
    reg = U.summarize(torch.zeros(4, 3), "homoscedastic", tau=1.0)
    assert U.classification(cls) is cls and U.regression(reg) is reg
    with pytest.raises(ParameterError, match="expected a classifier's summary, but the model is a regressor"):
        U.classification(reg)
    with pytest.raises(ValueError, match="expected a regressor's summary"):
        U.regression(cls)
