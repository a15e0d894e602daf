"""Decision-based stopping: the anytime-valid tests' error rate on hard synthetic streams, the decisions it
settles, and predict(stop="decision") on a real model (rows stop at different N, the first n passes are those of a
fixed-n call)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mcdrop import DropoutMLP, MCEngine
from mcdrop.uncertainty.prediction import predict
from mcdrop.uncertainty.stopping import DecisionRule, DecisionTests, next_round, settled
from tests.conftest import ALPHA


def run_streams(mu: torch.Tensor, delta: float, rule: DecisionRule, cap: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose passes are one-hot draws from ``mu`` (B, C): the hardest bounded streams (largest variance for
    their mean).  Returns each row's final mean probabilities and passes used."""
    gen = torch.Generator().manual_seed(seed)
    b, c = mu.shape
    tests = DecisionTests(b, c, delta, rule.levels(), rule.full_grid)
    sums = torch.zeros(b, c, dtype=torch.float64)
    final = torch.zeros(b, c, dtype=torch.float64)
    used = torch.full((b,), cap)
    active = torch.arange(b)
    n = 0
    while active.numel() and n < cap:
        m = 8 if n == 0 else next_round(n, cap)
        draws = torch.multinomial(mu[active], m - n, replacement=True, generator=gen)  # (B_open, m - n)
        x = torch.nn.functional.one_hot(draws, c).double().transpose(0, 1)  # (m - n, B_open, C)
        sums[active] += x.sum(0)
        tests.update(x)
        n = m
        mean = sums[active] / n
        lo, hi = tests.bounds()
        done = settled(mean, lo, hi, rule.select(active))
        final[active[done]] = mean[done]
        used[active[done]] = n
        active = active[~done]
        tests.select(torch.nonzero(~done).squeeze(1))
    final[active] = sums[active] / n
    return final, used


def binomial_bound(n: int, p: float) -> int:
    """Errors that n rows with error probability at most p exceed with probability ALPHA."""
    return int(stats.binom.ppf(1 - ALPHA, n, p))


def test_class_error_rate_is_below_delta_on_near_ties():
    """Two classes at 0.5 +- eps: a settled row names the wrong class with probability at most delta."""
    delta, b = 0.1, 3000
    eps = torch.linspace(0.02, 0.3, b).double()
    mu = torch.stack([0.5 + eps, 0.5 - eps], 1)
    final, used = run_streams(mu, delta, DecisionRule(), cap=400, seed=0)
    settled_rows = used < 400
    wrong = (final.argmax(1) != 0) & settled_rows
    assert settled_rows.sum() > b // 2  # the rule does stop
    assert int(wrong.sum()) <= binomial_bound(b, delta)


def test_abstention_and_lac_set_error_rate_is_below_delta():
    delta, b, tau, t = 0.1, 3000, 0.7, 0.25
    top = torch.linspace(0.55, 0.95, b).double()
    mu = torch.stack([top, (1 - top) * 0.7, (1 - top) * 0.3], 1)
    rule = DecisionRule(confidence=tau, set_method="lac", set_threshold=1 - t)
    final, used = run_streams(mu, delta, rule, cap=600, seed=1)
    ok = used < 600
    wrong = ((final.amax(1) < tau) != (mu.amax(1) < tau)) | ((final >= t) != (mu >= t)).any(1)
    wrong |= final.argmax(1) != 0
    assert ok.sum() > b // 4
    assert int((wrong & ok).sum()) <= binomial_bound(b, delta)


def test_aps_set_is_settled_only_when_the_box_fixes_it():
    p = torch.tensor([[0.9, 0.06, 0.04]], dtype=torch.float64)
    rule = DecisionRule(set_method="aps", set_threshold=0.5, u=torch.tensor([0.5]))
    tight = settled(p, p - 0.01, p + 0.01, rule)
    loose = settled(p, torch.zeros_like(p), torch.ones_like(p), rule)
    assert bool(tight) and not bool(loose)


def test_a_confident_row_settles_in_about_log2_of_classes_over_delta_passes():
    mu = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    _, used = run_streams(mu, 1e-3, DecisionRule(), cap=2000, seed=2)
    assert int(used) == 16  # log2(2 C / delta) = 12.6 passes at best; rounds of 8, 16, 24


def test_vectorised_update_equals_a_loop_over_passes():
    """The bets of Waudby-Smith & Ramdas's predictable plug-in, pass by pass, against the vectorised update."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand((30, 4, 3), generator=gen, dtype=torch.float64).softmax(-1)
    tests = DecisionTests(4, 3, 0.01, [0.7])
    tests.update(x[:11])
    tests.update(x[11:])
    log_k = torch.zeros_like(tests.log_capital)
    rejected = torch.zeros_like(tests.rejected)
    total, sq = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    for i in range(1, 31):
        var = ((0.25 + sq) / i).unsqueeze(-1)
        bet = torch.minimum(torch.sqrt(2 * tests.log_target / (var * i * math.log(1 + i))), tests.max_bet)
        log_k = log_k + torch.log1p(bet * tests.side * (x[i - 1].unsqueeze(-1) - tests.level))
        rejected |= log_k >= tests.log_target
        total = total + x[i - 1]
        sq = sq + (x[i - 1] - (0.5 + total) / (i + 1)) ** 2
    torch.testing.assert_close(tests.log_capital, log_k)
    assert torch.equal(tests.rejected, rejected)


def test_delta_out_of_range_is_refused():
    with pytest.raises(ValueError, match="delta has to be a probability"):
        DecisionTests(2, 3, 0.0)


def mlp() -> DropoutMLP:
    torch.manual_seed(0)
    return DropoutMLP(6, [32], 3, dropout=0.5)


def test_predict_stops_rows_at_different_n_and_each_answer_is_the_fixed_n_answer():
    engine = MCEngine(mlp())
    x = torch.randn(40, 6) * 2
    got = predict(engine, x, stop="decision", seed=3, max_samples=300, return_samples=True)
    n = got.summary.n_samples
    assert n.min() >= 8 and n.max() <= 300 and len(torch.unique(n)) > 1
    for i in (int(n.argmin()), int(n.argmax())):
        fixed = predict(engine, x[i:i + 1], n_samples=int(n[i]), seed=3, rows=torch.tensor([i]))
        torch.testing.assert_close(got.summary.probabilities[i], fixed.summary.probabilities[0], rtol=0, atol=1e-5)
    assert torch.isnan(got.samples[int(n.min()):, int(n.argmin())]).all()


def test_predict_settled_classes_agree_with_many_passes():
    engine = MCEngine(mlp())
    x = torch.randn(200, 6) * 2
    got = predict(engine, x, stop="decision", seed=4, max_samples=2000, delta=0.01)
    ref = engine.sample(x, 4000, seed=99).softmax(-1).mean(0).argmax(1)
    settled_rows = got.summary.n_samples < 2000
    wrong = int(((got.summary.probabilities.argmax(1) != ref) & settled_rows).sum())
    assert wrong <= binomial_bound(200, 0.01 + 0.01)  # delta, plus the reference's own rare errors near ties


def test_predict_refuses_stop_class_for_regression_and_stop_with_tolerance():
    torch.manual_seed(0)
    reg = MCEngine(DropoutMLP(3, [8], 1, dropout=0.2, head="homoscedastic", tau=1.0))
    with pytest.raises(ValueError, match="settles a classifier's class"):
        predict(reg, torch.randn(2, 3), stop="class", seed=0)
    with pytest.raises(ValueError, match="tolerance has to be None"):
        predict(MCEngine(mlp()), torch.randn(2, 6), stop="decision", tolerance=0.1, seed=0)


@pytest.mark.parametrize("head", ["homoscedastic", "heteroscedastic"])
def test_regression_stops_when_the_interval_ends_are_known_within_a_fraction_of_the_width(head):
    """The ends at a row's stopping N lie within 5% of the width of those of 20,000 passes on most rows (the rule is
    a normal approximation at delta = 0.05 per row: allow 3 delta)."""
    torch.manual_seed(1)
    model = DropoutMLP(3, [32], 1, dropout=0.3, head=head, tau=4.0 if head == "homoscedastic" else None)
    engine = MCEngine(model)
    x = torch.randn(120, 3) * 2
    got = predict(engine, x, stop="decision", delta=0.05, max_samples=2000, seed=2)
    n = got.summary.n_samples
    assert n.min() >= 8 and len(torch.unique(n)) > 1
    ref = predict(engine, x, n_samples=20000, seed=7).summary
    width = ref.interval_high - ref.interval_low
    off = torch.maximum((got.summary.interval_low - ref.interval_low).abs(),
                        (got.summary.interval_high - ref.interval_high).abs())
    bad = int(((off > 0.05 * width) & (n < 2000)).sum())
    assert bad <= binomial_bound(120, 3 * 0.05)
