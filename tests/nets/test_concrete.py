"""Concrete dropout: the rate gradient, the hard-mask limit, the mask's moments, export to DropoutMLP, learning."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, special, stats

from mcdrop.nets import concrete as C
from mcdrop.nets.models import DropoutMLP
from mcdrop.sampling.engine import MCEngine
from mcdrop.sampling.layers import Dropout
from mcdrop.training.classifier import ClassifierConfig, train_classifier
from tests.conftest import ALPHA, z_bound
from tests.tolerances import assert_outputs_close


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------------------------------------- (a) gradients


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_relaxed_dropout_gradient_matches_finite_differences(p):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    u = torch.rand(4, 6, dtype=torch.float64, generator=g)
    a = torch.tensor(_logit(p), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: C.concrete_dropout(x, a, 0.1, u), (x, a))
    assert torch.autograd.gradgradcheck(lambda x, a: C.concrete_dropout(x, a, 0.5, u), (x, a))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_regulariser_gradient_matches_finite_differences(p):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    a = torch.tensor(_logit(p), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, a: C.concrete_regulariser(w.square().sum(), w.shape[1], a, 0.3, 0.7), (w, a))
    layer = C.ConcreteDropout(p).double()  # the module's method, perturbing its own p_logit
    assert torch.autograd.gradcheck(lambda w, a: layer.regulariser(w, 0.3, 0.7), (w, layer.p_logit))


@pytest.mark.parametrize("p", [0.01, 0.2, 0.5, 0.9])
def test_entropy_term_derivative_known_answer(p):
    """d/da [K (p log p + (1-p) log(1-p))] = K log(p/(1-p)) p (1-p), p = sigmoid(a)."""
    k = 13
    layer = C.ConcreteDropout(p).double()
    weight = torch.zeros(3, k, dtype=torch.float64)  # |W|^2 = 0 leaves the entropy term alone
    value = layer.regulariser(weight, weight_reg=5.0, dropout_reg=1.0)
    (grad,) = torch.autograd.grad(value, layer.p_logit)
    q = layer.p
    assert float(value.detach()) == pytest.approx(k * (q * math.log(q) + (1 - q) * math.log(1 - q)), rel=1e-12)
    assert float(grad) == pytest.approx(k * math.log(q / (1 - q)) * q * (1 - q), rel=1e-12)


def test_regulariser_value_known_answer():
    layer = C.ConcreteDropout(0.25).double()
    weight = torch.full((2, 4), 0.5, dtype=torch.float64)  # |W|^2 = 2, K = 4
    q = layer.p
    want = 0.1 * 2.0 / (1 - q) + 0.01 * 4 * (q * math.log(q) + (1 - q) * math.log(1 - q))
    assert float(layer.regulariser(weight, 0.1, 0.01).detach()) == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------------------------- (b) hard limit


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7])
def test_small_temperature_gives_the_hard_mask(p):
    """As t -> 0 the relaxed mask is 1[u < 1 - p]: a unit is dropped when u > 1 - p (probability p)."""
    u = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    margin = (torch.logit(u) - _logit(1 - p)).abs() > 0.05  # |logit u + a| / t > 5000: exp under/overflows to 0/1
    u = u[margin]
    z = C.relaxed_keep_mask(u, torch.tensor(_logit(p), dtype=torch.float64), 1e-5)
    assert torch.equal(z, (u < 1 - p).double())


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature has to be > 0"):
        C.ConcreteDropout(0.1, temperature=0.0)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        C.ConcreteDropout(0.0)


# ---------------------------------------------------------------------------------------------- (c) moments


def _mean_keep(p: float, t: float) -> float:
    """E[z] by quadrature over u (exactly 1 - p only as t -> 0 or at p = 1/2)."""
    a = _logit(p)
    v, _ = integrate.quad(lambda u: special.expit(-(a + math.log(u) - math.log1p(-u)) / t), 0, 1,
                          points=[1 - p], limit=200, epsabs=1e-12)
    return v


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_relaxed_mask_keep_fraction_and_mean(p):
    n, t = 400_000, 0.1
    torch.manual_seed(7)
    layer = C.ConcreteDropout(p, temperature=t).train()
    x = torch.full((n,), 2.0)
    y = layer(x)
    z = (y * (1 - layer.p) / 2.0).double()
    q = layer.p
    # the relaxed mask exceeds 1/2 exactly when the hard mask keeps: Binomial(n, 1 - p)
    assert stats.binomtest(int((z > 0.5).sum()), n, 1 - q).pvalue > ALPHA
    # its mean is the quadrature's E[z] within the CLT bound, and within 0.2% of 1 - p at t = 0.1
    want = _mean_keep(q, t)
    assert abs(float(z.mean()) - want) < z_bound() * float(z.std()) / math.sqrt(n)
    assert abs(want - (1 - q)) < 2e-3 * (1 - q)
    # so E[x z / (1 - p)] = x (1 + O(t)): 2 within the same CLT bound widened by that bias
    bias = 2.0 * (want / (1 - q) - 1)
    assert abs(float(y.double().mean()) - 2.0 - bias) < z_bound() * float(y.double().std()) / math.sqrt(n)
    if p == 0.5:  # symmetric: unbiased at any temperature
        assert abs(bias) < 1e-9


def test_training_uses_the_global_rng_and_eval_is_identity():
    layer = C.ConcreteDropout(0.3)
    x = torch.randn(50, 8)
    torch.manual_seed(3)
    a = layer(x)
    torch.manual_seed(3)
    b = layer(x)
    c = layer(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    assert layer.eval()(x) is x


# ---------------------------------------------------------------------------------------------- (d) export


def _trained_like(seed: int = 0) -> DropoutMLP:
    """A Concrete MLP with distinct, moved rates and trained-looking buffers."""
    torch.manual_seed(seed)
    model = C.concrete_mlp(6, [32, 16], 3, p=0.2)
    with torch.no_grad():
        for logit, m in zip([-2.0, -0.4, -1.3], [model.net[0], model.net[3], model.net[6]], strict=True):
            m.p_logit.fill_(logit)
        model.input_shift.normal_()
        model.input_scale.uniform_(0.5, 2.0)
        model.temperature.fill_(1.3)
    return model.eval()


def test_concrete_mlp_layout_and_rates():
    model = C.concrete_mlp(4, [8, 8], 2, p=0.15, input_dropout=False)
    assert [type(m).__name__ for m in model.net] == ["Linear", "ReLU", "ConcreteDropout", "Linear", "ReLU",
                                                      "ConcreteDropout", "Linear"]
    assert list(C.learned_rates(model)) == ["net.2", "net.5"]
    assert all(r == pytest.approx(0.15) for r in C.learned_rates(model).values())


def test_to_dropout_serves_the_learned_rates():
    model = _trained_like()
    rates = C.learned_rates(model)
    plain = C.to_dropout(model)
    assert type(plain) is DropoutMLP and all(type(m) is not C.ConcreteDropout for m in plain.modules())
    assert plain.input_dropout == rates["net.0"] and plain.dropout_rates == [rates["net.3"], rates["net.6"]]
    x = torch.randn(40, 6)
    assert torch.equal(plain(x), model(x))  # deterministic outputs identical
    # MC samples: the Concrete model (generic path, ConcreteDropout.mc_forward) and the export (fused kernel)
    # draw the same keyed masks; they differ only by float32 summation order
    a = MCEngine(model).sample(x, 64, seed=11)
    b = MCEngine(plain).sample(x, 64, seed=11)
    assert_outputs_close(b, a)
    # and a DropoutMLP built by hand with those rates and the same weights gives the same samples
    hand = DropoutMLP(6, [32, 16], 3, dropout=[rates["net.3"], rates["net.6"]], input_dropout=rates["net.0"])
    hand.load_state_dict(plain.state_dict())
    assert torch.equal(MCEngine(hand).sample(x, 64, seed=11), b)


def test_to_dropout_keep_rate_is_the_learned_rate():
    """Binomial test: the exported input layer drops inputs at the learned rate under MC."""
    model = _trained_like()
    plain = C.to_dropout(model)
    q = C.learned_rates(model)["net.0"]
    keys = torch.arange(2000, dtype=torch.int64).view(20, 100)
    out = plain.net[0].mc_forward(torch.ones(100, 6), keys)
    assert isinstance(plain.net[0], Dropout)
    assert stats.binomtest(int((out == 0).sum()), out.numel(), q).pvalue > ALPHA


def test_exported_model_saves_and_loads(tmp_path):
    from mcdrop.nets.artifacts import load_model, save_model

    plain = C.to_dropout(_trained_like())
    save_model(plain, tmp_path / "m", {"name": "concrete", "version": "1", "task": "classification",
                                       "input_shape": [6], "input_size": 6, "normalisation": "none",
                                       "class_names": ["a", "b", "c"]})
    model, _ = load_model(tmp_path / "m")
    x = torch.randn(10, 6)
    assert torch.equal(MCEngine(model).sample(x, 8, seed=1), MCEngine(plain).sample(x, 8, seed=1))


def test_penalty_sums_each_layer_with_the_linear_it_feeds():
    model = _trained_like()
    n, ls = 500, 1e-2
    want = sum(m.regulariser(w, ls**2 / n, 2.0 / n) for m, w in [(model.net[0], model.net[1].weight),
                                                                    (model.net[3], model.net[4].weight),
                                                                    (model.net[6], model.net[7].weight)])
    torch.testing.assert_close(C.concrete_penalty(model, n, ls), want)
    with pytest.raises(ValueError, match="no ConcreteDropout"):
        C.concrete_penalty(DropoutMLP(3, [4], 2), 10)


# ---------------------------------------------------------------------------------------------- (e) learning


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 10, generator=g) * 0.8 + y[:, None].float() * 0.6
    return x, y


def _learned(n: int, epochs: int, batch: int) -> dict[str, float]:
    x, y = _blobs(n, seed=0)
    config = ClassifierConfig(hidden=[32], dropout=[0.1], optimizer="adam", lr=3e-2, epochs=epochs, batch_size=batch,
                              val_fraction=0.0, seed=0)
    model, _ = train_classifier(config, x, y, n_classes=2,
                                factory=lambda d, c: C.concrete_mlp(d, [32], c, p=0.1),
                                penalty=lambda m: C.concrete_penalty(m, n))
    return C.learned_rates(model)


def test_more_data_learns_lower_rates():
    """Same number of Adam steps (300) from p = 0.1: with 40 rows the prior's entropy term (2K/N) pulls every
    rate up towards 1/2; with 10,000 rows the data term dominates and every rate falls."""
    small = _learned(40, epochs=300, batch=40)
    large = _learned(10_000, epochs=6, batch=200)
    for name in small:
        assert small[name] > 0.15 and large[name] < 0.07, (small, large)
