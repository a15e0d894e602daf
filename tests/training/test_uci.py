"""The UCI protocol: masks, the stacked trainer, unstacking, scoring, the whole pipeline on generated data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mcdrop.training import uci
from mcdrop.training.data import UCIDataset, load_uci
from mcdrop.uncertainty import metrics as M
from tests.conftest import ALPHA, needs_data


def linear_dataset(n: int = 600, seed: int = 0, noise: float = 0.1) -> UCIDataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.2] + [0.0, 10.0, -3.0]
    y = x @ np.array([1.0, 0.2, -4.0]) + 7.0 + noise * rng.normal(size=n)
    perm = [rng.permutation(n) for _ in range(2)]
    splits = [(p[: int(0.9 * n)], p[int(0.9 * n) :]) for p in perm]
    return UCIDataset("synthetic", x, y, splits, n_hidden=20, n_epochs=40, dropout_rates=[0.005, 0.05],
                      tau_values=[10.0, 100.0])


@pytest.mark.parametrize("p", [0.005, 0.1, 0.5])
def test_keep_masks_drop_at_the_rate(p):
    """Binomial test of the 16-bit masks' drop rate (the rate rounded to a multiple of 2^-16)."""
    g = torch.Generator().manual_seed(1)
    drop_words = round(p * 65536)
    threshold = torch.tensor([drop_words - 32768], dtype=torch.int16).view(1, 1, 1)
    keep = uci._keep(torch.Size([1, 1000, 1000]), threshold, g)
    dropped = int((~keep).sum())
    test = stats.binomtest(dropped, keep.numel(), drop_words / 65536)
    assert test.pvalue > ALPHA


def test_keep_masks_are_independent_across_lanes():
    """Neighbouring 16-bit lanes of one random word are uncorrelated (chi-square test of the 2x2 table)."""
    g = torch.Generator().manual_seed(2)
    threshold = torch.tensor([0], dtype=torch.int16).view(1, 1, 1)  # p = 1/2
    keep = uci._keep(torch.Size([1, 1, 300_000]), threshold, g).view(-1, 3)
    for a, b in [(0, 1), (1, 2)]:
        table = np.histogram2d(keep[:, a].numpy(), keep[:, b].numpy(), bins=2)[0]
        assert stats.chi2_contingency(table).pvalue > ALPHA / 2
    for lane in range(3):  # each lane on its own is fair (the word's always-zero top bit is not used)
        assert stats.binomtest(int(keep[:, lane].sum()), len(keep), 0.5).pvalue > ALPHA / 3


def first_split_standardised(ds):
    """The first split's training rows, standardised as the protocol does: rows, x and y ``(1, n, ...)``, and
    the input and target statistics."""
    rows = ds.splits[0][0]
    xm, xs = uci._standardise(ds.x[rows])
    ym, ys = float(ds.y[rows].mean()), float(ds.y[rows].std())
    x = torch.tensor((ds.x[rows] - xm) / xs, dtype=torch.float32)[None]
    y = torch.tensor((ds.y[rows] - ym) / ys, dtype=torch.float32)[None]
    return rows, x, y, (xm, xs), (ym, ys)


def test_unstacked_model_matches_the_stack():
    """The DropoutMLP built from stacked weights computes the stacked network (dropout off)."""
    ds = linear_dataset()
    g = torch.Generator().manual_seed(0)
    rows, x, y, (xm, xs), (ym, ys) = first_split_standardised(ds)
    weights = uci._train_stack(x, y, torch.tensor([0, 0]), torch.tensor([0.05, 0.1]), torch.tensor([1e-4, 1e-4]),
                               hidden=20, epochs=2, batch_size=32, lr=1e-3, generator=g)
    w1, b1, w2, b2 = weights
    for i in range(2):
        model = uci._unstack(weights, i, [0.05, 0.1][i], 10.0, (xm, xs), (ym, ys))
        expected = (torch.relu(x[0] @ w1[i] + b1[i]) @ w2[i] + b2[i]) * ys + ym
        torch.testing.assert_close(model(torch.tensor(ds.x[rows], dtype=torch.float32)), expected, rtol=1e-5, atol=1e-4)


def test_score_uses_the_protocol_formulas():
    ds = linear_dataset()
    model = uci.fit_regressor(ds, 0.05, 100.0, uci.UCIConfig(epochs_multiplier=0.5, seed=0))
    x, y = ds.x[:50], ds.y[:50]
    got = uci.score(model, x, y, n_samples=300, seed=5)
    from mcdrop.sampling.engine import MCEngine

    samples = MCEngine(model).sample(torch.tensor(x, dtype=torch.float32), 300, seed=5).double().numpy()
    assert got["rmse"] == pytest.approx(M.rmse(samples.mean(0), y))
    ll = np.mean([np.logaddexp.reduce(-50.0 * (y[i] - samples[:, i]) ** 2) for i in range(50)])
    assert got["ll"] == pytest.approx(ll - math.log(300) - 0.5 * math.log(2 * math.pi) + 0.5 * math.log(100.0))


def test_protocol_end_to_end_on_generated_data():
    """A near-linear target is learnt: test RMSE well below the target's spread, a pair chosen per split."""
    ds = linear_dataset()
    result = uci.run_protocol(ds, uci.UCIConfig(epochs_multiplier=5, samples=200, seed=0))
    assert len(result.splits) == 2 and result.epochs == 200
    for s in result.splits:
        assert (s.dropout, s.tau) in [(p, t) for p in ds.dropout_rates for t in ds.tau_values]
        assert set(s.val_ll) == {f"p={p:g},tau={t:g}" for p in ds.dropout_rates for t in ds.tau_values}
        assert s.rmse < 0.2 * ds.y.std()
    mean, se = result.mean_se("rmse")
    assert se > 0 and mean == pytest.approx(np.mean([s.rmse for s in result.splits]))
    table = uci.summarize([result])
    assert table.splitlines()[2].startswith("| synthetic | 600 | 3 | 2 | 200 | 200 |")


def test_training_is_reproducible():
    ds = linear_dataset()
    config = uci.UCIConfig(epochs_multiplier=0.25, seed=3)
    a, b = uci.fit_regressor(ds, 0.05, 10.0, config), uci.fit_regressor(ds, 0.05, 10.0, config)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


@needs_data("uci", "yacht", "data.txt")
def test_real_yacht_two_splits():
    ds = load_uci("yacht")
    result = uci.run_protocol(ds, uci.UCIConfig(epochs_multiplier=1, samples=100, splits=2, seed=0))
    assert [s.split for s in result.splits] == [0, 1]
    assert all(np.isfinite([s.rmse, s.ll, s.rmse_deterministic]).all() for s in result.splits)


# ---------------------------------------------------------------------------------------------- heteroscedastic


def test_mixture_ll_known_answers():
    y = np.array([0.3, -1.0])
    # one pass: the Gaussian log-density with that pass's variance
    one = np.array([[[0.0, math.log(4.0)], [1.0, 0.0]]])
    want = np.mean([stats.norm.logpdf(0.3, 0.0, 2.0), stats.norm.logpdf(-1.0, 1.0, 1.0)])
    assert uci.heteroscedastic_mixture_ll(one, y) == pytest.approx(want, rel=1e-12)
    # two passes: the equal-weight mixture of their densities, each with its own variance
    two = np.array([[[0.0, math.log(4.0)], [1.0, 0.0]], [[0.5, math.log(0.25)], [-2.0, math.log(9.0)]]])
    mix = [math.log(0.5 * stats.norm.pdf(0.3, 0.0, 2.0) + 0.5 * stats.norm.pdf(0.3, 0.5, 0.5)),
           math.log(0.5 * stats.norm.pdf(-1.0, 1.0, 1.0) + 0.5 * stats.norm.pdf(-1.0, -2.0, 3.0))]
    assert uci.heteroscedastic_mixture_ll(two, y) == pytest.approx(np.mean(mix), rel=1e-12)


def test_mixture_moments_integrate_the_mixture_density():
    """Mean and variance of the mixture of N(mu_t, exp(s_t)) by quadrature of its density: the variance is
    the mean of the passes' variances plus the (ddof 0) variance of their means."""
    from scipy import integrate

    samples = np.array([[[0.0, math.log(4.0)]], [[3.0, math.log(0.25)]], [[-1.0, 0.0]]])  # T=3, N=1
    mean, aleatoric, epistemic = uci.mixture_moments(samples)

    def density(v: float) -> float:
        return float(np.mean([stats.norm.pdf(v, m, math.exp(ls / 2)) for m, ls in samples[:, 0]]))

    m1 = integrate.quad(lambda v: v * density(v), -40, 40, limit=200)[0]
    m2 = integrate.quad(lambda v: (v - m1) ** 2 * density(v), -40, 40, limit=200)[0]
    assert mean[0] == pytest.approx(m1, abs=1e-8)
    assert aleatoric[0] + epistemic[0] == pytest.approx(m2, rel=1e-7)
    assert epistemic[0] > 0 and aleatoric[0] > 0
    # identical passes: no epistemic part; the mixture is that one Gaussian
    same = np.repeat(samples[:1], 5, axis=0)
    assert uci.mixture_moments(same)[2][0] == 0.0 and uci.mixture_moments(same)[1][0] == pytest.approx(4.0)


def test_heteroscedastic_stack_unstacks_to_the_heteroscedastic_head():
    ds = linear_dataset()
    g = torch.Generator().manual_seed(0)
    rows, x, y, (xm, xs), (ym, ys) = first_split_standardised(ds)
    weights = uci._train_stack(x, y, torch.tensor([0, 0]), torch.tensor([0.05, 0.1]), torch.tensor([1e-4, 1e-4]),
                               hidden=20, epochs=2, batch_size=32, lr=1e-3, generator=g, heteroscedastic=True)
    w1, b1, w2, b2 = weights
    assert w2.shape == (2, 20, 2) and b2.shape == (2, 2)
    model = uci._unstack(weights, 1, 0.1, None, (xm, xs), (ym, ys))
    assert model.head.value == "heteroscedastic"
    out = torch.relu(x[0] @ w1[1] + b1[1]) @ w2[1] + b2[1]
    expected = torch.stack([out[:, 0] * ys + ym, out[:, 1] + 2 * math.log(ys)], -1)
    torch.testing.assert_close(model(torch.tensor(ds.x[rows], dtype=torch.float32)), expected, rtol=1e-5, atol=1e-4)


def two_noise_dataset(n: int = 800, seed: int = 0) -> UCIDataset:
    """y = x0 + noise, the noise's std 0.1 where x1 < 0 and 1.0 where x1 > 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = x[:, 0] + np.where(x[:, 1] < 0, 0.1, 1.0) * rng.normal(size=n)
    perm = rng.permutation(n)
    splits = [(perm[: int(0.8 * n)], perm[int(0.8 * n):])]
    return UCIDataset("two-noise", x, y, splits, n_hidden=20, n_epochs=40, dropout_rates=[0.005, 0.05],
                      tau_values=[1.0])


def test_heteroscedastic_protocol_learns_the_noise_level():
    """The grid over p alone, scored by the mixture LL: the predicted variance follows the noise (std 0.1 vs
    1.0: log-variances -4.6 vs 0), and the LL beats the homoscedastic network's, which must use one tau."""
    ds = two_noise_dataset()
    config = uci.UCIConfig(epochs_multiplier=5, samples=200, seed=0)
    hetero = uci.run_protocol(ds, config, heteroscedastic=True)
    [s] = hetero.splits
    assert hetero.head == "heteroscedastic" and s.tau is None and set(s.val_ll) == {"p=0.005", "p=0.05"}
    model = uci.fit_regressor(ds, s.dropout, None, config, rows=ds.splits[0][0])
    test = ds.splits[0][1]
    log_var = model(torch.tensor(ds.x[test], dtype=torch.float32))[:, 1].detach().numpy()
    quiet, loud = log_var[ds.x[test, 1] < -0.5], log_var[ds.x[test, 1] > 0.5]
    assert np.median(loud) - np.median(quiet) > 2.0  # the truth: 4.6
    homo = uci.run_protocol(ds, config)
    assert s.ll > homo.splits[0].ll + 0.1
    assert "(0.005, learned)" in uci.summarize([hetero]) or "(0.05, learned)" in uci.summarize([hetero])


def test_beta_nll_keeps_learning_the_noise_level():
    """beta-NLL's weight sigma^(2 beta) is held constant, so the log-variance's optimum is still the squared error:
    the predicted variance follows the noise as with the plain NLL, and the LL still beats the homoscedastic
    network's. Its mean fits the noisy half no worse: RMSE within 5% of the plain NLL's (here both are at the
    noise floor, so this does not show beta-NLL's gain, only that the weighting is not broken)."""
    ds = two_noise_dataset()
    config = uci.UCIConfig(epochs_multiplier=5, samples=200, seed=0, beta_nll=0.5)
    [s] = uci.run_protocol(ds, config, heteroscedastic=True).splits
    model = uci.fit_regressor(ds, s.dropout, None, config, rows=ds.splits[0][0])
    test = ds.splits[0][1]
    log_var = model(torch.tensor(ds.x[test], dtype=torch.float32))[:, 1].detach().numpy()
    quiet, loud = log_var[ds.x[test, 1] < -0.5], log_var[ds.x[test, 1] > 0.5]
    assert np.median(loud) - np.median(quiet) > 2.0  # the truth: 4.6
    plain = uci.run_protocol(ds, uci.UCIConfig(epochs_multiplier=5, samples=200, seed=0), heteroscedastic=True)
    homo = uci.run_protocol(ds, uci.UCIConfig(epochs_multiplier=5, samples=200, seed=0))
    assert s.ll > homo.splits[0].ll + 0.1
    assert s.rmse < 1.05 * plain.splits[0].rmse


def test_only_runs_the_named_splits_with_their_scoring_seeds():
    ds = linear_dataset()
    config = uci.UCIConfig(epochs_multiplier=0.5, samples=50, val_samples=20, seed=0)
    result = uci.run_protocol(ds, config, only=[1], heteroscedastic=True)
    assert [s.split for s in result.splits] == [1]
    with pytest.raises(IndexError):
        uci.run_protocol(ds, config, only=[2])


def test_cli_heteroscedastic_switch(cli, tmp_path, monkeypatch):
    ds = linear_dataset(n=200)
    monkeypatch.setattr("mcdrop.training.data.UCI_DATASETS", {"synthetic": None})
    monkeypatch.setattr("mcdrop.training.data.load_uci", lambda name, root=None: ds)
    out = tmp_path / "h.md"
    run = cli("bench", "uci", "--heteroscedastic", "--datasets", "synthetic", "--epochs-multiplier", "0.25",
              "--samples", "50", "--val-samples", "20", "--threads", "1", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "heteroscedastic network" in out.read_text() and "learned)" in out.read_text()
    import json

    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows[0]["head"] == "heteroscedastic" and all(s["tau"] is None for s in rows[0]["splits"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--beta-nll", "0.5"], "--beta-nll: weighs the heteroscedastic network's loss; give --heteroscedastic"),
    (["--heteroscedastic", "--beta-nll", "2"], "--beta-nll: "),
    (["--concrete", "--lr-schedule", "cosine"], "--lr-schedule: sets the grid search's training"),
    (["--floor", "0.01"], "--floor: sets how Concrete dropout learns its rates; give --concrete"),
    (["--keep-best"], "--keep-best: sets how Concrete dropout learns its rates"),
    (["--concrete", "--keep-best"], "--keep-best: keep_best picks the rates on held-out rows"),
    (["--concrete", "--floor", "0.05", "--cap", "0.01"], "--cap: cap has to be in (floor, 1]"),
    (["--concrete", "--rate-objective", "test"], "--rate-objective: invalid choice"),
])
def test_cli_uci_flags_are_checked(cli, tmp_path, flags, message):
    run = cli("bench", "uci", "--quick", *flags, "-o", tmp_path / "b.md")
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "b.md").exists()


def test_chosen_schedule_takes_each_splits_better_validated_run():
    """lr_schedule "chosen" is the two single-schedule runs and, per split, the one whose grid reached the higher
    validation LL: each split's result is that run's own (same seeds), chosen on validation rows alone."""
    ds = linear_dataset(n=300, noise=0.5)
    base = dict(epochs_multiplier=1, samples=50, val_samples=50, seed=0, beta_nll=0.5)
    runs = {s: uci.run_protocol(ds, uci.UCIConfig(lr_schedule=s, **base), heteroscedastic=True)
            for s in ("constant", "cosine")}
    chosen = uci.run_protocol(ds, uci.UCIConfig(lr_schedule="chosen", **base), heteroscedastic=True)
    assert len(chosen.splits) == 2 and chosen.config.lr_schedule == "chosen"
    for k, got in enumerate(chosen.splits):
        best = {s: max(r.splits[k].val_ll.values()) for s, r in runs.items()}
        want = max(best, key=best.__getitem__)
        assert got.lr_schedule == want
        mine = runs[want].splits[k]
        assert (got.dropout, got.rmse, got.ll) == (mine.dropout, mine.rmse, mine.ll)
        assert got.val_ll == {f"{s} {key}": v for s, r in runs.items() for key, v in r.splits[k].val_ll.items()}
    assert {s.rmse for s in runs["constant"].splits} != {s.rmse for s in runs["cosine"].splits}  # two real runs
    with pytest.raises(uci.ConfigError, match="'chosen' is a choice between runs"):
        uci.fit_regressor(ds, 0.05, None, uci.UCIConfig(lr_schedule="chosen", **base))
