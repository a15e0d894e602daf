"""Abstention thresholds: the risk bound holds on the data it was chosen on, coverage quantiles, the curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mcdrop.uncertainty import selective
from tests.conftest import ALPHA


def data(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=n)
    return u, (rng.uniform(size=n) < 0.3 * u).astype(float)  # errors grow with uncertainty


def test_risk_threshold_keeps_the_true_risk_below_the_target_with_probability_one_minus_delta():
    """Known answer: in :func:`data`, answering ``u <= t`` has selective risk ``E[0.3 u | u <= t] = 0.15 t``, so a
    threshold meets the target 0.05 exactly when ``t <= 1/3``.  Over independent calibration sets the chosen
    threshold exceeds 1/3 in at most a share delta (one-sided binomial test), and it answers a useful share."""
    runs, delta = 300, 0.05
    thresholds = np.array([selective.risk_threshold(*data(2000, seed=100 + r), 0.05, delta=delta) for r in range(runs)])
    assert stats.binomtest(int((thresholds > 1 / 3).sum()), runs, delta, alternative="greater").pvalue > ALPHA
    assert np.median(thresholds) > 0.2  # not trivially abstaining on everything (coverage = t)
    u, e = data()
    assert selective.risk_threshold(u, e, 1e-6) == -math.inf  # an impossible target answers nothing


def test_coverage_threshold_is_the_quantile():
    u, _ = data()
    assert np.mean(u <= selective.coverage_threshold(u, 0.7)) == pytest.approx(0.7, abs=1 / len(u))
    assert selective.coverage_threshold(u, 1.0) == u.max()


def test_risk_coverage_curve_is_monotone_in_coverage():
    u, e = data()
    curve = selective.risk_coverage(u, e, points=11)
    coverages = [c for c, _, _ in curve]
    assert coverages == sorted(coverages) and coverages[-1] == 1.0
    assert curve[0][1] < curve[-1][1]  # the least uncertain are right more often
