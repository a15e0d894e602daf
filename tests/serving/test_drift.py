"""Drift monitoring: online conformal p-values are uniform under exchangeability, the test martingale's false
alarms stay within Ville's bound, a shifted stream raises the alarm, and the gauges reach Prometheus."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mcdrop.serving import drift
from tests.conftest import ALPHA


def test_p_values_count_the_reference_and_the_earlier_inputs():
    reference = np.array([1.0, 2.0, 3.0])
    p = drift.conformal_p_values(reference, np.array([10.0, 0.0, 2.0]), u=np.array([0.5, 0.5, 0.5]))
    # 10: nothing above it, itself -> 0.5 / 4; 0: 4 above (3 + the 10) -> (4 + 0.5) / 5; 2: {3, 10} above, one tie
    np.testing.assert_allclose(p, [0.5 / 4, 4.5 / 5, (2 + 0.5 * 2) / 6])


def test_online_p_values_are_uniform_under_exchangeability():
    rng = np.random.default_rng(0)
    p = drift.conformal_p_values(np.sort(rng.normal(size=300)), rng.normal(size=2000), rng.random(2000))
    assert stats.kstest(p, "uniform").pvalue > ALPHA
    rounded = np.round(rng.normal(size=4000), 1)  # many ties: the smoothed p-values stay uniform
    p = drift.conformal_p_values(np.sort(rounded[:1000]), rounded[1000:], rng.random(3000))
    assert stats.kstest(p, "uniform").pvalue > ALPHA


def test_the_martingale_stays_at_one_on_neutral_p_values_and_grows_on_small_ones():
    jumper = drift.Jumper(jump=0.01, bins=0)
    assert jumper.update([0.5] * 100)[-1] == pytest.approx(0.0)  # log10 S: f_e(1/2) = 1 for every linear bet
    path = drift.Jumper(jump=0.01).update([0.01] * 400)
    assert (np.diff(path) > 0).all() and path[-1] > 50  # the plug-in bet learns the point mass: no overflow
    assert drift.Jumper().update([0.5] * 100)[-1] > 2  # p-values all alike are not uniform: the plug-in bet wins
    with pytest.raises(ValueError, match="jump has to be in"):
        drift.Jumper(jump=0.0)
    with pytest.raises(ValueError, match="bins has to be 0 or >= 2"):
        drift.Jumper(bins=1)


def test_the_plug_in_bet_catches_p_values_piled_in_the_middle():
    """Inputs that score closer to the typical than calibration inputs do give p-values with mean 1/2 but not
    uniform (here Beta(2, 2), KL 0.125 nats from uniform): no linear bet wins on them (e = 0 is neutral, e = +-1
    lose), so the three linear bets alone alarm with probability <= 1% per stream (Ville); the plug-in bet learns
    their density and alarms."""
    streams = [np.random.default_rng(run).beta(2, 2, size=1000) for run in range(20)]
    linear = sum(bool((drift.Jumper(bins=0).update(p) >= 2).any()) for p in streams)
    assert stats.binom(20, 0.01).sf(linear - 1) > ALPHA, linear  # P(at least this many) under the bound
    paths = [drift.Jumper().update(p) for p in streams]
    assert all(path.max() >= 2 for path in paths), [path.max() for path in paths]  # log10 S reached 2: S >= 100


def test_false_alarms_under_exchangeable_input_stay_within_the_bound():
    """Ville: P(sup S >= 1 / alpha) <= alpha.  Over 300 independent exchangeable streams of 1,000 inputs the
    number of alarms is binomial with a rate of at most alpha (one-sided test)."""
    alpha, runs = 0.05, 300
    alarms = 0
    for run in range(runs):
        rng = np.random.default_rng(1000 + run)
        monitor = drift.DriftMonitor(rng.normal(size=200), threshold=1.645, alpha=alpha, window=200, seed=run)
        alarms += monitor.update(rng.normal(size=1000)).alarm
    assert stats.binomtest(alarms, runs, alpha, alternative="greater").pvalue > ALPHA, alarms


def test_a_shifted_stream_raises_the_alarm_and_the_window_statistics_move():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=3000)
    threshold = float(np.quantile(reference, 0.95))
    monitor = drift.DriftMonitor(reference, threshold, window=500, alpha=0.01, seed=0)
    clean = monitor.update(rng.normal(size=2000))
    assert not clean.alarm and clean.window == 500
    sd = np.sqrt(0.05 * 0.95 / 500)
    assert abs(clean.ood_share - 0.05) < stats.norm.ppf(1 - ALPHA / 2) * sd + 0.01  # 0.01: the threshold's own error
    assert clean.ks < stats.kstwo.ppf(1 - ALPHA, 500)
    shifted = monitor.update(rng.normal(loc=1.0, size=500))  # a covariate shift of one standard deviation
    assert shifted.alarm and shifted.ood_share > 0.15 and shifted.ks > stats.kstwo.ppf(1 - ALPHA, 500)
    assert shifted.inputs == 2500


def test_a_new_segment_starts_over():
    rng = np.random.default_rng(4)
    monitor = drift.DriftMonitor(rng.normal(size=500), threshold=1.645, window=100, segment=1000, seed=0)
    assert monitor.update(rng.normal(loc=3.0, size=400)).alarm
    state = monitor.update(rng.normal(size=700))
    assert state.inputs == 100 and not state.alarm and state.martingale < 100
    with pytest.raises(ValueError, match="segment >= window"):
        drift.DriftMonitor(np.zeros(3), 0.0, window=10, segment=5)
    with pytest.raises(ValueError, match="reference has to hold"):
        drift.DriftMonitor(np.array([]), 0.0)


def test_gauges_show_each_watched_model():
    import prometheus_client

    metrics = drift.drift_metrics()
    assert drift.drift_metrics() is metrics
    rng = np.random.default_rng(5)
    metrics.watch({"m": drift.DriftMonitor(rng.normal(size=100), threshold=1.645)})
    metrics.observe("m", np.full(20, 10.0))
    metrics.observe("unwatched", np.zeros(3))
    metrics.observe("m", None)
    text = prometheus_client.generate_latest().decode()
    assert 'mcdrop_drift_ood_share{model="m"} 1.0' in text and 'mcdrop_drift_inputs{model="m"} 20.0' in text
    assert 'model="unwatched"' not in text
