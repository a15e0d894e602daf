"""Conformal sets and intervals: known quantiles, the coverage guarantee on exchangeable synthetic data (within the
beta-binomial bounds scipy.stats gives), keyed uniforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mcdrop.core import conformal
from tests.conftest import ALPHA


def test_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 10.0)  # n = 9
    assert conformal.conformal_quantile(scores, 0.9) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal.conformal_quantile(scores, 0.8) == 8.0
    assert conformal.conformal_quantile(scores, 0.95) == math.inf  # ceil(9.5) = 10 > n
    with pytest.raises(ValueError, match=r"coverage has to be in \(0, 1\)"):
        conformal.conformal_quantile(scores, 1.0)


def synthetic(n: int, seed: int, c: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities from a Dirichlet and labels drawn from them: a calibrated model, exchangeable rows."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.4), size=n)
    labels = np.array([rng.choice(c, p=p) for p in probs])
    return torch.tensor(probs), torch.tensor(labels)


@pytest.mark.parametrize("method", conformal.METHODS)
@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_sets_cover_at_the_nominal_level(method, level):
    p_cal, y_cal = synthetic(2000, seed=1)
    p_test, y_test = synthetic(5000, seed=2)
    u_cal = conformal.keyed_uniforms(7, torch.arange(2000))
    u_test = conformal.keyed_uniforms(8, torch.arange(5000))
    q = conformal.conformal_quantile(np.sort(conformal.label_scores(p_cal, y_cal, method, u_cal).numpy()), level)
    sets = conformal.set_scores(p_test, method, u_test) <= q
    covered = float(sets[torch.arange(5000), y_test].double().mean())
    lo, hi = conformal.coverage_interval(5000, 2000, level, alpha=ALPHA)
    assert lo <= covered <= hi, (covered, lo, hi)
    assert float(sets.sum(1).double().mean()) < 6  # informative: not every label


def test_coverage_interval_matches_its_moments():
    lo, hi = conformal.coverage_interval(10_000, 3000, 0.9, alpha=0.01)
    mean = (3001 - math.floor(3001 * 0.1)) / 3001  # E[Beta(n + 1 - l, l)]
    assert 0.9 <= mean <= 0.9 + 1 / 3001 and lo < mean < hi
    sd = math.sqrt(0.09 / 3001 + 0.09 / 10_000)  # calibration spread plus test spread
    assert abs((hi - lo) - 2 * stats.norm.ppf(0.995) * sd) < 0.003


def test_aps_includes_the_top_label_and_raps_trims_the_tail():
    p, _ = synthetic(500, seed=3)
    u = conformal.keyed_uniforms(1, torch.arange(500))
    aps, raps = conformal.set_scores(p, "aps", u), conformal.set_scores(p, "raps", u, lam=0.5, k_reg=1)
    top = p.argmax(1)
    assert (aps[torch.arange(500), top] <= p.max(1).values + 1e-12).all()  # the top label's score is u * p_max
    assert (raps >= aps - 1e-12).all() and (raps.amax(1) > aps.amax(1)).all()
    assert torch.allclose(conformal.set_scores(p, "lac"), 1 - p)


def test_keyed_uniforms_are_reproducible_uniform_and_keyed_by_row():
    rows = torch.arange(20_000)
    u = conformal.keyed_uniforms(5, rows)
    assert torch.equal(u, conformal.keyed_uniforms(5, rows)) and not torch.equal(u, conformal.keyed_uniforms(6, rows))
    assert torch.equal(u[100:200], conformal.keyed_uniforms(5, rows[100:200]))  # a row's value ignores its batch
    assert stats.kstest(u.numpy(), "uniform").pvalue > ALPHA
    assert u.min() >= 0 and u.max() < 1


def test_normalised_regression_intervals_cover():
    rng = np.random.default_rng(0)

    def draw(n):
        sigma = rng.uniform(0.5, 3.0, size=n)
        return rng.normal(0, sigma), sigma

    y_cal, s_cal = draw(2000)
    y_test, s_test = draw(5000)
    q = conformal.conformal_quantile(np.sort(np.abs(y_cal) / s_cal), 0.9)
    covered = float((np.abs(y_test) <= q * s_test).mean())
    lo, hi = conformal.coverage_interval(5000, 2000, 0.9, alpha=ALPHA)
    assert lo <= covered <= hi
