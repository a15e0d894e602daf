"""Evaluation metrics: known answers, brute-force definitions, and the null distribution of AUROC."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from mcdrop.uncertainty import metrics as M
from tests.conftest import z_bound


def test_nll_and_brier_known_answers():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]])
    y = np.array([0, 2])
    assert M.nll(p, y) == pytest.approx(-(math.log(0.7) + math.log(0.25)) / 2)
    assert M.brier(p, y) == pytest.approx(((0.3**2 + 0.2**2 + 0.1**2) + (0.25**2 + 0.5**2 + 0.75**2)) / 2)
    assert M.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))  # clipped, finite


def test_ece_by_hand_and_zero_when_calibrated():
    # bins of width 1/15: 0.95 and 0.99 share the top bin, 0.6 has its own
    p = np.array([[0.95, 0.05], [0.99, 0.01], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    top = (2 / 3) * abs(0.5 - 0.97)
    mid = (1 / 3) * abs(1.0 - 0.6)
    assert M.ece(p, y) == pytest.approx(top + mid)
    # confidence 0.8 with exactly 80% correct: calibrated
    p = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert M.ece(p, y) == pytest.approx(0.0, abs=1e-12)


def brute_auroc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([1.0 if o > i else 0.5 if o == i else 0.0 for i, o in itertools.product(a, b)]))


def brute_average_precision(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over OOD inputs of the precision among inputs scored at least as high (ties counted together)."""
    scores = np.r_[a, b]
    return float(np.mean([(b >= t).sum() / (scores >= t).sum() for t in b]))


def test_auroc_and_aupr_match_their_definitions_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 40).astype(float), rng.integers(2, 9, 30).astype(float)
    assert M.auroc(a, b) == pytest.approx(brute_auroc(a, b))
    assert M.aupr(a, b) == pytest.approx(brute_average_precision(a, b))
    assert M.auroc([0, 1], [2, 3]) == 1.0 and M.aupr([0, 1], [2, 3]) == 1.0 and M.auroc([2, 3], [0, 1]) == 0.0


def test_auroc_of_identical_distributions_is_half_within_its_null_sd():
    """Under H0 the Mann-Whitney AUROC has mean 1/2 and sd sqrt((n1 + n2 + 1) / (12 n1 n2))."""
    rng = np.random.default_rng(1)
    n1, n2 = 3000, 2000
    auc = M.auroc(rng.normal(size=n1), rng.normal(size=n2))
    assert abs(auc - 0.5) < z_bound() * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def test_fpr_at_95_tpr():
    ood = np.arange(100, 200, dtype=float)  # >= 105 flags exactly 95 of 100; >= 106 only 94
    ind = np.array([0.0, 104.0, 105.0, 150.0])
    assert M.fpr_at_95_tpr(ind, ood) == pytest.approx(0.5)
    assert M.fpr_at_95_tpr([100.5, 101.0], np.arange(100, 120, dtype=float)) == pytest.approx(0.5)  # 19 of 20: >= 101


def test_selective_prediction():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([1, 0, 1, 1, 0])
    risks = np.array([0, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    assert M.aurc(conf, correct) == pytest.approx(risks.mean())
    assert M.aurc(conf, np.ones(5)) == 0.0
    assert M.accuracy_at_coverage(conf, correct, 0.8) == pytest.approx(3 / 4)  # the 4 most confident
    assert M.accuracy_at_coverage(conf, correct, 0.2) == 1.0


def test_rmse_and_uci_log_likelihood():
    assert M.rmse([1.0, 2.0, 3.0], [1.0, 0.0, 3.0]) == pytest.approx(math.sqrt(4 / 3))
    y, tau = np.array([0.3, -1.2]), 2.5
    one = np.array([[0.0, -1.0]])  # T = 1: a Gaussian log density with variance 1 / tau
    assert M.gaussian_mixture_ll(one, y, tau) == pytest.approx(stats.norm.logpdf(y, one[0], tau**-0.5).mean())
    two = np.array([[0.0, -1.0], [1.0, -2.0]])  # T = 2: an equal-weight mixture of the two densities
    mix = np.log(0.5 * stats.norm.pdf(y, two[0], tau**-0.5) + 0.5 * stats.norm.pdf(y, two[1], tau**-0.5)).mean()
    assert M.gaussian_mixture_ll(two, y, tau) == pytest.approx(mix)
