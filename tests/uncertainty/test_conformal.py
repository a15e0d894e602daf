"""Conformal sets and intervals: known quantiles, the coverage guarantee on exchangeable synthetic data (within the
beta-binomial bounds scipy.stats gives), keyed uniforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mcdrop.uncertainty import conformal
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
@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_sets_cover_at_the_nominal_level(method, level):
    """On exchangeable data the empirical coverage of 5,000 test inputs lies in the beta-binomial interval of the
    guarantee (calibration and test sampling both); the non-randomised sets add the top class, so only the lower
    end binds them, and they are never empty."""
    p_cal, y_cal = synthetic(2000, seed=1)
    p_test, y_test = synthetic(5000, seed=2)
    u_cal = conformal.keyed_uniforms(7, torch.arange(2000))
    u_test = conformal.keyed_uniforms(8, torch.arange(5000))
    q = conformal.conformal_quantile(np.sort(conformal.label_scores(p_cal, y_cal, method, u_cal).numpy()), level)
    sets = conformal.prediction_sets(p_test, method, q, u_test)
    covered = float(sets[torch.arange(5000), y_test].double().mean())
    lo, hi = conformal.coverage_interval(5000, 2000, level, alpha=ALPHA)
    sizes = sets.sum(1)
    assert lo <= covered, (covered, lo)
    if method in conformal.RANDOMIZED:
        assert covered <= hi, (covered, hi)
    else:
        assert (sizes >= 1).all()
    assert float(sizes.double().mean()) < 6  # informative: not every label


def test_only_randomised_sets_are_ever_empty_and_non_randomised_ones_ignore_the_uniforms():
    """The issue's case: a confident input at a level the model's accuracy exceeds.  Randomised APS empties the
    set of some inputs; APS, RAPS and LAC keep the top class, whatever uniforms they are handed."""
    p_cal, y_cal = synthetic(2000, seed=4)
    p_test, _ = synthetic(3000, seed=5)
    u = conformal.keyed_uniforms(3, torch.arange(3000))
    for method in conformal.METHODS:
        q = conformal.conformal_quantile(np.sort(conformal.label_scores(
            p_cal, y_cal, method, conformal.keyed_uniforms(9, torch.arange(2000))).numpy()), 0.5)
        sets = conformal.prediction_sets(p_test, method, q, u)
        empty = int((sets.sum(1) == 0).sum())
        if method in conformal.RANDOMIZED:
            assert empty > 0, method
        else:
            assert empty == 0, method
            other = conformal.prediction_sets(p_test, method, q, conformal.keyed_uniforms(4, torch.arange(3000)))
            assert torch.equal(sets, other) and torch.equal(sets, conformal.prediction_sets(p_test, method, q))
            assert sets[torch.arange(3000), p_test.argmax(1)].all()


def test_aps_takes_the_top_classes_until_their_mass_exceeds_the_threshold():
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]], dtype=torch.float64)  # ranked: 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    for q, expected in ((0.0, {1}), (0.4, {1}), (0.5, {1, 3}), (0.79, {1, 3}), (0.8, {1, 3, 0}), (0.96, {0, 1, 2, 3})):
        got = set(torch.nonzero(conformal.prediction_sets(p, "aps", q)[0]).flatten().tolist())
        assert got == expected, (q, got)
    with pytest.raises(ValueError, match="aps_randomized needs one uniform per input"):
        conformal.set_scores(p, "aps_randomized")
    with pytest.raises(ValueError, match="method has to be one of"):
        conformal.set_scores(p, "top")


def test_coverage_interval_matches_its_moments():
    lo, hi = conformal.coverage_interval(10_000, 3000, 0.9, alpha=0.01)
    mean = (3001 - math.floor(3001 * 0.1)) / 3001  # E[Beta(n + 1 - l, l)]
    assert 0.9 <= mean <= 0.9 + 1 / 3001 and lo < mean < hi
    sd = math.sqrt(0.09 / 3001 + 0.09 / 10_000)  # calibration spread plus test spread
    assert abs((hi - lo) - 2 * stats.norm.ppf(0.995) * sd) < 0.003


def test_aps_includes_the_top_label_and_raps_trims_the_tail():
    p, _ = synthetic(500, seed=3)
    u = conformal.keyed_uniforms(1, torch.arange(500))
    top = p.argmax(1)
    for suffix in ("", "_randomized"):
        aps = conformal.set_scores(p, "aps" + suffix, u)
        raps = conformal.set_scores(p, "raps" + suffix, u, lam=0.5, k_reg=1)
        assert (aps[torch.arange(500), top] <= p.max(1).values + 1e-12).all()  # the top label's score is u * p_max
        assert (raps >= aps - 1e-12).all() and (raps.amax(1) > aps.amax(1)).all()
    assert (conformal.set_scores(p, "aps")[torch.arange(500), top] == 0).all()
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
