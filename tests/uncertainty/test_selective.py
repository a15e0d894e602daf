"""Abstention thresholds: the risk bound holds on the data it was chosen on, coverage quantiles, the curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mcdrop.uncertainty import selective


def data(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=n)
    return u, (rng.uniform(size=n) < 0.3 * u).astype(float)  # errors grow with uncertainty


def test_risk_threshold_keeps_the_bound_below_the_target():
    u, e = data()
    t = selective.risk_threshold(u, e, 0.05, delta=0.05)
    answered = u <= t
    k, n = int(e[answered].sum()), int(answered.sum())
    assert stats.beta.ppf(0.95, k + 1, n - k) <= 0.05
    assert answered.mean() > 0.2  # not trivially abstaining on everything
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
