"""The Concrete-dropout UCI protocol: the stacked trainer, unstacking, the mixture LL, the whole run, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from mcdrop.nets.concrete import ConcreteDropout, concrete_mlp, learned_rates, to_dropout
from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling.engine import MCEngine
from mcdrop.training import concrete_uci as CU
from mcdrop.training.configs import ConfigError
from mcdrop.training.uci import UCIConfig
from tests.tolerances import EPS32
from tests.training.test_uci import linear_dataset


def _rate_rel(*rates: float) -> float:
    """How far a float32 rate may move in a round trip through its logit (the served model stores the logit
    ``a``, the trace stores ``sigmoid(a)``): a float32 rounding of ``a`` moves ``p`` by ``p (1 - p) |a| eps``,
    and each float32 sigmoid by ``eps`` relative; 4x that for the float64 / float32 casts on the way."""
    return 4 * EPS32 * (1 + max(abs(math.log(p) - math.log1p(-p)) for p in rates))


def _stack(seed: int = 0, epochs: int = 3) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(9))
    y = x.sum(-1) + 0.1 * torch.randn(2, 64, generator=torch.Generator().manual_seed(10))
    return CU._train_concrete_stack(x, y, hidden=8, epochs=epochs, batch_size=16, lr=1e-2, length_scale=1e-2,
                                    generator=g), x, y


def test_stack_shapes_and_determinism():
    a, _, _ = _stack(0)
    b, _, _ = _stack(0)
    c, _, _ = _stack(1)
    shapes = {k: tuple(v.shape) for k, v in a.items()}
    assert shapes == {"w1": (2, 3, 8), "b1": (2, 8), "w2": (2, 8, 2), "b2": (2, 2), "p_in": (2,), "p_hidden": (2,),
                      "trace": (0, 2, 2), "rate_epoch": (2,)}
    assert (a["rate_epoch"] == 3).all()  # no held-out rows: the last rates
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["w1"], c["w1"])
    start = math.log(0.1 / 0.9)
    assert (a["p_in"] != start).all() and (a["p_hidden"] != start).all()  # the rates are trained


def test_unstacked_model_computes_the_stack():
    weights, x, _ = _stack()
    x_stats = (np.array([1.0, -2.0, 0.5]), np.array([2.0, 1.0, 3.0]))
    y_stats = (4.0, 2.5)
    raw = torch.tensor(x[1].numpy() * x_stats[1] + x_stats[0], dtype=torch.float32)
    model = CU._unstack(weights, 1, x_stats, y_stats)
    rates = learned_rates(model)
    assert rates["net.0"] == pytest.approx(float(torch.sigmoid(weights["p_in"][1])))
    assert rates["net.3"] == pytest.approx(float(torch.sigmoid(weights["p_hidden"][1])))
    out = torch.baddbmm(weights["b2"][1:2, None], torch.relu(x[1:2] @ weights["w1"][1] + weights["b1"][1]),
                        weights["w2"][1:2])[0]
    want = torch.stack([out[:, 0] * 2.5 + 4.0, out[:, 1] + 2 * math.log(2.5)], -1)
    torch.testing.assert_close(model(raw), want, rtol=1e-5, atol=1e-4)


def test_run_concrete_on_generated_data_serves_as_dropout_mlp():
    ds = linear_dataset(n=300)
    config = UCIConfig(epochs_multiplier=2.0, samples=200, seed=3)
    result = CU.run_concrete(ds, config)
    again = CU.run_concrete(ds, config)
    assert len(result.splits) == 2 and result.epochs == 80
    assert [(s.rmse, s.ll, s.p_input, s.p_hidden) for s in result.splits] == \
        [(s.rmse, s.ll, s.p_input, s.p_hidden) for s in again.splits]
    for s in result.splits:
        assert 0 < s.p_input < 1 and 0 < s.p_hidden < 1 and s.p_input != pytest.approx(0.1)
        assert np.isfinite([s.rmse, s.rmse_deterministic, s.ll]).all()
    # a network that learned nothing would score about the target's std (1.6)
    assert result.mean_se("rmse")[0] < 0.5 * float(ds.y.std())
    table = CU.summarize_concrete([result])
    assert "learned p (input)" in table and "| synthetic | 300 | 3 | 2 | 80 | 200 |" in table

    model = CU.fit_concrete(ds, config, rows=ds.splits[0][0])
    assert any(isinstance(m, ConcreteDropout) for m in model.modules())
    served = to_dropout(model)
    assert type(served) is DropoutMLP and served.head.value == "heteroscedastic"
    x = torch.tensor(ds.x[ds.splits[0][1]], dtype=torch.float32)
    assert torch.equal(served(x), model(x))
    samples = MCEngine(served).sample(x, 50, seed=0)
    assert samples.shape == (50, len(x), 2)
    torch.testing.assert_close(samples, MCEngine(model).sample(x, 50, seed=0), rtol=1e-5, atol=1e-5)
    scored = CU.score_heteroscedastic(served, ds.x[ds.splits[0][1]], ds.y[ds.splits[0][1]], 50, seed=0)
    assert scored["ll"] == pytest.approx(CU.heteroscedastic_mixture_ll(samples, ds.y[ds.splits[0][1]]), rel=1e-9)


def test_cli_concrete_switch(cli, tmp_path, monkeypatch):
    ds = linear_dataset(n=200)
    monkeypatch.setattr("mcdrop.training.data.UCI_DATASETS", {"synthetic": None})
    monkeypatch.setattr("mcdrop.training.data.load_uci", lambda name, root=None: ds)
    out = tmp_path / "c.md"
    run = cli("bench", "uci", "--concrete", "--datasets", "synthetic", "--epochs-multiplier", "0.25", "--samples", "50",
              "--threads", "1", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "Concrete dropout" in out.read_text() and "learned p (hidden)" in out.read_text()
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows[0]["dataset"] == "synthetic" and len(rows[0]["splits"]) == 2 and "train_seconds" in rows[0]
    bad = cli("bench", "uci", "--concrete", "--val-samples", "10", "--datasets", "synthetic", "-o", out)
    assert bad.returncode == 2 and "--val-samples" in bad.stderr
    both = cli("bench", "uci", "--concrete", "--heteroscedastic", "--datasets", "synthetic", "-o", out)
    assert both.returncode == 2 and "--heteroscedastic" in both.stderr
    held = cli("bench", "uci", "--concrete", "--rate-objective", "validation", "--floor", "0.005", "--cap", "0.1",
               "--keep-best", "--beta-nll", "0.5", "--datasets", "synthetic", "--epochs-multiplier", "0.25",
               "--samples", "50", "--threads", "1", "-o", out)
    assert held.returncode == 0, held.stderr
    assert "floor 0.005, cap 0.1, rates on held-out NLL (S = 8), best check, beta-NLL beta = 0.5" in out.read_text()
    [row] = json.loads(out.with_suffix(".json").read_text())
    assert row["options"]["keep_best"] and row["config"]["beta_nll"] == 0.5
    for split in row["splits"]:
        assert split["rate_epoch"] >= 1 and 0.005 - 1e-6 <= split["p_input"] <= 0.1 + 1e-6


def test_collapsed_rates_are_scored_by_the_deterministic_pass():
    """Rates below 2^-17 are 0 in keyed masks: the T passes are the deterministic one, the mixture one Gaussian."""
    torch.manual_seed(0)
    model = concrete_mlp(3, [8], 1, head="heteroscedastic")
    with torch.no_grad():
        model.net[0].p_logit.fill_(-30.0)
        model.net[3].p_logit.fill_(-25.0)
    served = to_dropout(model)
    assert CU.keyed_dropout_off(served)
    assert not CU.keyed_dropout_off(to_dropout(concrete_mlp(3, [8], 1, head="heteroscedastic")))
    x, y = np.random.default_rng(0).normal(size=(6, 3)), np.linspace(-1, 1, 6)
    out = served(torch.tensor(x, dtype=torch.float32)).double().detach().numpy()
    got = CU.score_heteroscedastic(served, x, y, 100, seed=0)
    assert got["ll"] == pytest.approx(stats.norm.logpdf(y, out[:, 0], np.exp(out[:, 1] / 2)).mean(), rel=1e-9)
    assert got["rmse"] == got["rmse_deterministic"]


def test_options_are_checked_and_labelled():
    for bad, match in [({"rate_lr": 0.0}, "rate_lr"), ({"floor": 1.0}, "floor"), ({"trace_every": -1}, "trace_every"),
                       ({"rate_objective": "test"}, "rate_objective has to be one of elbo, validation"),
                       ({"val_passes": 1}, "val_passes"), ({"keep_best": True}, "keep_best"),
                       ({"cap": 0.01, "floor": 0.05}, "cap has to be in"), ({"cap": 1.5}, "cap")]:
        with pytest.raises(ValueError, match=match):
            CU.ConcreteOptions(**bad)
    assert CU.ConcreteOptions().label() == "hetero"
    assert CU.ConcreteOptions(rate_lr=1e-4, floor=0.005, heteroscedastic=False).label() == \
        "homo-tau, rate lr 0.0001, floor 0.005"
    assert CU.ConcreteOptions(rate_objective="validation").label() == "hetero, rates on held-out NLL (S = 8)"


def test_a_learning_rate_schedule_is_refused_not_ignored():
    """Concrete's trainer has no schedule: a config asking for one fails naming the field instead of training
    at a constant rate under a label that says otherwise."""
    config = UCIConfig(epochs_multiplier=0.1, samples=10, lr_schedule="cosine")
    with pytest.raises(ConfigError, match="lr_schedule has to be 'constant' for Concrete dropout") as err:
        CU.run_concrete(linear_dataset(n=60), config)
    assert err.value.field == "lr_schedule"


def test_floor_holds_and_a_frozen_rate_lr_keeps_the_initial_rate():
    """The floor is a projection: no rate ends (or is traced) below it. A rate lr of 1e-12 leaves p at 0.1."""
    x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(9))
    y = x.sum(-1)  # noiseless: the data pull the rates down
    common = dict(hidden=8, epochs=20, batch_size=16, lr=1e-2, length_scale=1e-2, trace_every=5)
    free = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), **common)
    floored = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), floor=0.12, **common)
    frozen = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), rate_lr=1e-12, **common)
    free_rates = torch.sigmoid(torch.stack([free["p_in"], free["p_hidden"]]))
    assert (free_rates < 0.12).any()  # without the floor some end below it
    floored_rates = torch.sigmoid(torch.stack([floored["p_in"], floored["p_hidden"]]))
    assert (floored_rates >= 0.12 - 1e-6).all() and (floored["trace"] >= 0.12 - 1e-6).all()
    assert floored["trace"].shape == (4, 2, 2)
    torch.testing.assert_close(torch.sigmoid(frozen["p_in"]), torch.full((2,), 0.1), rtol=1e-6, atol=1e-6)


def test_homoscedastic_head_with_a_tau_grid():
    """The homoscedastic variant chooses tau from the dataset's grid on validation LL and serves that head."""
    ds = linear_dataset(n=300)
    config = UCIConfig(epochs_multiplier=3.0, samples=100, val_samples=50, seed=0)
    options = CU.ConcreteOptions(heteroscedastic=False, trace_every=30)
    result = CU.run_concrete(ds, config, options=options, only=[1])
    [s] = result.splits
    assert s.split == 1 and s.tau in ds.tau_values and set(s.val_ll) == {"tau=10", "tau=100"}
    assert np.isfinite([s.rmse, s.ll]).all() and s.rmse < 0.6 * float(ds.y.std())  # it learned
    assert [row[0] for row in result.trace[1]] == [30, 60, 90, 120]
    model = CU.fit_concrete(ds, config, rows=ds.splits[0][0], options=options, tau=s.tau)
    served = to_dropout(model)
    assert served.head.value == "homoscedastic" and float(served.tau) == s.tau


def _noisy_held_out(noise: float) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(2, 96, 3, generator=torch.Generator().manual_seed(9))
    y = x.sum(-1)  # noiseless training rows: their loss pulls the rates down
    xv = torch.randn(2, 32, 3, generator=torch.Generator().manual_seed(11))
    yv = xv.sum(-1) + noise * torch.randn(2, 32, generator=torch.Generator().manual_seed(12))
    return x, y, (xv, yv)


def test_held_out_rows_set_the_rates_and_only_the_rates():
    """With held-out rows the rates follow them, not the training loss: noiseless training rows pull the rates
    down under the published recipe, while held-out rows the network cannot fit (noise 3x the signal's std)
    push them up, since spread across passes is the only width the held-out NLL can add.  The weights never
    see the held-out rows: with the rates frozen, held-out rows of other values leave the weights as they were;
    and the rates never see the training loss (the same, the other way round)."""
    x, y, val = _noisy_held_out(3.0)
    common = dict(hidden=8, epochs=30, batch_size=16, lr=1e-2, length_scale=1e-2)
    elbo = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), **common)
    held = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), val=val, **common)
    start = math.log(0.1 / 0.9)
    for name in ("p_in", "p_hidden"):
        assert (elbo[name] < start).all() and (held[name] > start).all(), (name, elbo[name], held[name])
    # a cap is a projection: those rising rates end, and are traced, at or below it
    capped = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), val=val, cap=0.1,
                                      trace_every=1, **common)
    assert capped["trace"].max() <= 0.1 + 1e-6 and torch.sigmoid(capped["p_in"]).max() <= 0.1 + 1e-6

    # and the rates never see the training loss: with the weights frozen, training rows of other values leave
    # the rates as they were
    still = dict(common, lr=1e-12, rate_lr=1e-2)
    one = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), val=val, **still)
    two = CU._train_concrete_stack(x, -3 * y + 1, generator=torch.Generator().manual_seed(0), val=val, **still)
    assert not torch.equal(one["p_in"], torch.full((2,), start))  # they did learn
    for name in ("p_in", "p_hidden"):
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6)

    frozen = dict(common, rate_lr=1e-12)
    a = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), val=val, **frozen)
    other = (val[0], -5 * val[1])  # same shapes, so the same draws from the generator
    b = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), val=other, **frozen)
    for name in ("w1", "b1", "w2", "b2"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)


def test_keep_best_takes_the_rates_of_the_lowest_held_out_check(monkeypatch):
    """keep_best moves along the same trajectory and stops at the check with the lowest held-out NLL: networks that
    overfit (pure-noise targets, 24 rows, 32 units) see their held-out NLL rise before the end, so they keep
    earlier rates; the kept rates are the traced rates of that epoch, and that check's NLL is the least."""
    g = torch.Generator().manual_seed(3)
    x, y, xv, yv = torch.randn(2, 24, 4, generator=g), torch.randn(2, 24, generator=g), \
        torch.randn(2, 24, 4, generator=g), torch.randn(2, 24, generator=g)
    common = dict(hidden=32, epochs=150, batch_size=8, lr=1e-2, length_scale=1e-2, trace_every=1, val=(xv, yv))
    last = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), **common)
    checks: list[torch.Tensor] = []
    inputs: list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []
    real = CU._mixture_nll

    def recorded(*args, **kwargs):
        out = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # the checks run without autograd; the rates' steps with it
            checks.append(out)
            inputs.append((args[0], args[1], args[-1]))
        return out

    monkeypatch.setattr(CU, "_mixture_nll", recorded)
    best = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), keep_best=True, **common)
    torch.testing.assert_close(best["trace"], last["trace"], rtol=0, atol=0)  # the same trajectory
    assert (last["rate_epoch"] == 150).all()
    assert len(checks) == 150  # epochs <= CHECKS: every epoch
    nll = torch.stack(checks)  # (checks, G)
    assert torch.equal(best["rate_epoch"], nll.argmin(0) + 1)
    assert (best["rate_epoch"] < 150).all(), best["rate_epoch"]
    for k in range(2):
        kept = torch.sigmoid(torch.stack([best["p_in"][k], best["p_hidden"][k]]))
        torch.testing.assert_close(kept, best["trace"][best["rate_epoch"][k] - 1, k])
    # every check sees all held-out rows, S passes each, with the same noise (common random numbers)
    passes = 8
    for xs, ys, noise in inputs:
        assert xs.shape == (2, passes * 24, 4) and torch.equal(ys, yv)
        assert noise[0] is inputs[0][2][0] and noise[1] is inputs[0][2][1]
        assert noise[1].shape == (2, passes * 24, 32)

    # more epochs than checks: every ceil(epochs / CHECKS) epochs and after the last one
    monkeypatch.setattr(CU, "CHECKS", 7)
    checks.clear()
    sparse = CU._train_concrete_stack(x, y, generator=torch.Generator().manual_seed(0), keep_best=True, **common)
    at = [e for e in range(1, 151) if e % 22 == 0] + [150]  # ceil(150 / 7) = 22
    assert len(checks) == len(at) == 7
    assert torch.equal(sparse["rate_epoch"], torch.tensor(at)[torch.stack(checks).argmin(0)])


def test_fixed_rates_are_kept():
    x, y, _ = _noisy_held_out(0.0)
    rates = torch.tensor([[0.02, 0.3], [0.07, 0.01]])
    out = CU._train_concrete_stack(x, y, hidden=8, epochs=5, batch_size=16, lr=1e-2, length_scale=1e-2,
                                   generator=torch.Generator().manual_seed(0), rates=rates, floor=0.5)
    got = torch.sigmoid(torch.stack([out["p_in"], out["p_hidden"]], -1))
    torch.testing.assert_close(got, rates, rtol=1e-6, atol=0)  # neither learned nor floored


def test_held_out_nll_estimates_the_engines_mixture():
    """The rates' loss, ``-log (1/S) sum_s N(y; mu_s, sigma_s^2)`` over S relaxed passes (up to log(2 pi)/2),
    against the mixture LL of the same network served as keyed dropout (hard masks, the engine): both estimate
    the same predictive density.  The relaxation's bias vanishes as t -> 0 (measured with 200,000 passes: 0.008
    at the training t = 0.1, under 0.001 at t = 0.001), so at t = 0.001 the two are draws of one estimator and
    the tolerance is 5 standard errors of their difference, the standard error of a log-mean from the per-pass
    densities by the delta method."""
    weights, x, _ = _stack(seed=4, epochs=2)
    row, target = x[:1, :1], torch.tensor([[0.7]])  # network 0, one held-out row
    w = tuple(weights[k][:1] for k in ("w1", "b1", "w2", "b2"))
    w = (w[0], w[1][:, None], w[2], w[3][:, None])
    logits = (torch.full((1, 1, 1), math.log(0.2 / 0.8)), torch.full((1, 1, 1), math.log(0.3 / 0.7)))
    passes = 20_000
    nll = CU._held_out_nll((row, target), w, logits, None, 1, passes, 0.001, torch.Generator().manual_seed(1))
    relaxed_ll = -float(nll[0]) - 0.5 * math.log(2 * math.pi)
    weights = {**weights, "p_in": logits[0].view(1).expand(2), "p_hidden": logits[1].view(1).expand(2)}
    model = to_dropout(CU._unstack(weights, 0, (np.zeros(3), np.ones(3)), (0.0, 1.0)))
    samples = MCEngine(model).sample(row[0], passes, seed=2).double()  # (T, 1, 2): mu, log sigma^2
    mu, log_var = samples[:, 0, 0], samples[:, 0, 1]
    density = torch.exp(-0.5 * (0.7 - mu) ** 2 / log_var.exp() - 0.5 * log_var) / math.sqrt(2 * math.pi)
    engine_ll = CU.heteroscedastic_mixture_ll(samples, np.array([0.7]))
    assert engine_ll == pytest.approx(float(density.mean().log()), rel=1e-9)
    se = float(density.std() / density.mean()) / math.sqrt(passes)  # delta method: se of log(mean)
    assert abs(relaxed_ll - engine_ll) < 5 * math.sqrt(2) * se, (relaxed_ll, engine_ll, se)
    assert 0 < se < 0.01  # the passes do differ, and the check has resolution


def test_held_out_nll_pairs_each_row_with_its_own_passes():
    """Rows and passes are not mixed up: with rates of ~0 every pass is the plain forward pass, so the loss is
    the mean Gaussian NLL of the drawn rows (drawn as the function draws them), per network; and with the
    homoscedastic head, ``tau (y - mu)^2 / 2``."""
    weights, x, y = _stack(seed=5, epochs=2)
    xv, yv = x[:, :6], y[:, :6] + torch.linspace(-1, 1, 6)  # (2, 6, 3), (2, 6): rows that differ
    w = (weights["w1"], weights["b1"][:, None], weights["w2"], weights["b2"][:, None])
    off = (torch.full((2, 1, 1), -30.0), torch.full((2, 1, 1), -30.0))
    generator = torch.Generator().manual_seed(3)
    idx = torch.randint(6, (2, 4), generator=torch.Generator().manual_seed(3))  # the function's first draw
    out = torch.baddbmm(w[3], torch.relu(torch.baddbmm(w[1], xv, w[0])), w[2])  # (2, 6, 2)
    mu, s = out[..., 0].gather(1, idx), out[..., 1].gather(1, idx)
    target = yv.gather(1, idx)
    want = (0.5 * (torch.exp(-s) * (target - mu) ** 2 + s)).mean(1)
    got = CU._held_out_nll((xv, yv), w, off, None, 4, 5, CU.TEMPERATURE, generator)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tau = torch.tensor([2.0, 0.5])
    got = CU._held_out_nll((xv, yv), (w[0], w[1], w[2][..., :1], w[3][..., :1]), off, tau, 4, 5, CU.TEMPERATURE,
                           torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, (0.5 * tau[:, None] * (target - mu) ** 2).mean(1), rtol=1e-5, atol=1e-5)


def test_beta_nll_reaches_the_concrete_trainer():
    ds = linear_dataset(n=200)
    rows = ds.splits[0][0]
    nll = CU.fit_concrete(ds, UCIConfig(epochs_multiplier=0.5, samples=10, seed=1), rows=rows)
    beta = CU.fit_concrete(ds, UCIConfig(epochs_multiplier=0.5, samples=10, seed=1, beta_nll=0.5), rows=rows)
    assert not torch.equal(nll.net[1].weight, beta.net[1].weight)


def test_validation_objective_retrains_at_the_learned_rates():
    """The served network's rates are those the held-out rows taught (the trace's last entry), and it was
    retrained on all training rows: it differs from the network the rates were learned with."""
    ds = linear_dataset(n=300)
    config = UCIConfig(epochs_multiplier=2.0, samples=200, seed=3, beta_nll=0.5)
    options = CU.ConcreteOptions(rate_objective="validation", val_passes=4, trace_every=80)
    result = CU.run_concrete(ds, config, options=options, only=[0])
    [s] = result.splits
    [[epoch, p_in, p_h]] = result.trace[0]
    assert epoch == 80 and (s.p_input, s.p_hidden) == pytest.approx((p_in, p_h), rel=1e-6)
    assert np.isfinite([s.rmse, s.ll]).all() and s.rmse < 0.5 * float(ds.y.std()) and not s.mc_off
    rows = ds.splits[0][0]
    model = CU.fit_concrete(ds, config, rows=rows, options=options)
    assert learned_rates(model) == pytest.approx({"net.0": s.p_input, "net.3": s.p_hidden}, rel=1e-6)
    # retrained on all the rows (standardised by their statistics), not the learning run's 80%
    fit, held_out = CU._held_out_split(rows, config)
    assert len(held_out) == round(0.2 * len(rows)) and np.array_equal(np.concatenate([fit, held_out]), rows)
    np.testing.assert_allclose(model.input_shift.numpy(), ds.x[rows].mean(0), rtol=1e-5)
    [learner] = CU._fit_many(ds, [fit], config, torch.Generator().manual_seed(config.seed), options, [None],
                             [held_out]).models
    assert learned_rates(learner) == pytest.approx(learned_rates(model), rel=1e-6)
    assert not torch.equal(learner.net[1].weight, model.net[1].weight)
    assert s.rate_epoch is None  # the last rates
    kept_run = CU.run_concrete(ds, config, options=replace(options, keep_best=True, trace_every=1), only=[0])
    [kept] = kept_run.splits
    assert kept.rate_epoch is not None and 1 <= kept.rate_epoch <= result.epochs
    # the network retrained on all rows serves the rates of the kept check
    traced = kept_run.trace[0][kept.rate_epoch - 1][1:]
    assert (kept.p_input, kept.p_hidden) == pytest.approx(traced, rel=_rate_rel(*traced))
    homo = CU.ConcreteOptions(heteroscedastic=False, rate_objective="validation", val_passes=4, trace_every=80)
    [h] = (got := CU.run_concrete(ds, replace(config, beta_nll=0.0), options=homo, only=[1])).splits
    assert h.tau in ds.tau_values and (h.p_input, h.p_hidden) == pytest.approx(got.trace[1][-1][1:], rel=1e-6)
    with pytest.raises(ConfigError, match="beta_nll") as err:
        CU.run_concrete(ds, config, options=CU.ConcreteOptions(heteroscedastic=False), only=[0])
    assert err.value.field == "beta_nll"
