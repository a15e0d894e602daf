"""Dropout layers: drop rates, unbiasedness, channel structure, eval identity, validation."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from mcdrop import ChannelDropout, DropConnectLinear, Dropout, GaussianDropout
from mcdrop.sampling import functional as F
from mcdrop.sampling import rng
from tests.conftest import ALPHA, z_bound


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def keys(seed: int, s: int, b: int) -> torch.Tensor:
    return rng.stream_keys(rng.seed_key(seed), (0, 0), torch.arange(b), torch.arange(s))


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_training_drop_rate_matches_p(p):
    gen = torch.Generator().manual_seed(0)
    out = F.dropout(torch.ones(200_000), p, generator=gen)
    dropped = int((out == 0).sum())
    assert stats.binomtest(dropped, out.numel(), p).pvalue > ALPHA
    assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - p)))


@pytest.mark.parametrize(("p", "bits"), [(0.5, 1), (0.25, 2), (0.75, 2), (0.0625, 4), (3 / 256, 8), (0.1, 16), (0.33, 16)])
def test_lane_width_is_the_fewest_bits_that_hold_p_exactly(p, bits):
    assert F.quantized_rate(p)[0] == bits and F.quantized_rate(p)[2] == pytest.approx(p, abs=2**-17)
    mask = F.keep_mask(keys(9, 200, 40), 70, p)
    dropped = int((mask == 0).sum())
    assert stats.binomtest(dropped, mask.numel(), F.quantized_rate(p)[2]).pvalue > ALPHA


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9, 0.33])
def test_keyed_drop_rate_matches_p(p):
    mask = F.keep_mask(keys(1, 100, 50), 40, p)
    dropped = int((mask == 0).sum())
    assert stats.binomtest(dropped, mask.numel(), p).pvalue > ALPHA
    assert abs(F.quantized_rate(p)[2] - p) <= 2**-17


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_keyed_dropout_is_unbiased(p):
    h = torch.linspace(0.5, 2.0, 8)
    out = F.mc_dropout(h.expand(1, 8), keys(3, 40_000, 1), p)  # (S*B, 8)
    sd = h * math.sqrt(p / (1 - p))  # per-element sd of h'
    z = (out.mean(0) - h) / (sd / math.sqrt(out.shape[0]))
    assert z.abs().max() < z_bound(ALPHA / 8)


def test_training_dropout_is_unbiased():
    gen = torch.Generator().manual_seed(4)
    h = torch.full((100_000,), 3.0)
    out = F.dropout(h, 0.3, generator=gen)
    z = (out.mean() - 3.0) / (3.0 * math.sqrt(0.3 / 0.7) / math.sqrt(h.numel()))
    assert abs(z) < z_bound()


def test_keyed_masks_independent_across_samples_and_rows():
    mask = F.keep_mask(keys(5, 400, 300), 64, 0.5)  # (S, B, n)
    across_samples = torch.corrcoef(torch.stack([mask[:-1].flatten(), mask[1:].flatten()]))[0, 1]
    across_rows = torch.corrcoef(torch.stack([mask[:, :-1].flatten(), mask[:, 1:].flatten()]))[0, 1]
    n = mask[:-1].numel()
    assert abs(across_samples) < z_bound() / math.sqrt(n)
    assert abs(across_rows) < z_bound() / math.sqrt(n)


@pytest.mark.parametrize("layer", [ChannelDropout(0.5), nn.Dropout2d(0.5)])
def test_channel_masks_constant_within_channel(layer):
    x = torch.ones(64, 16, 5, 5)
    if isinstance(layer, ChannelDropout):
        out = F.channel_dropout(x, layer.p, generator=seeded(3))
    else:  # the keyed version used by MC mode for torch's Dropout2d
        out = F.mc_channel_dropout(x, keys(6, 3, 64), layer.p).view(3, 64, 16, 25)
    flat = out.reshape(*out.shape[:-2], -1) if isinstance(layer, ChannelDropout) else out
    assert torch.all(flat.amax(-1) == flat.amin(-1))
    dropped = int((flat[..., 0] == 0).sum())
    assert stats.binomtest(dropped, flat[..., 0].numel(), 0.5).pvalue > ALPHA


def test_gaussian_noise_mean_and_variance():
    p, n = 0.3, 200_000
    noise = F.mc_gaussian_dropout(torch.ones(1, 1), keys(7, n, 1), p).flatten().double()
    var = p / (1 - p)
    assert abs(noise.mean() - 1) < z_bound() * math.sqrt(var / n)
    lo, hi = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], n - 1) / (n - 1) * var
    assert lo < noise.var().item() < hi
    gen = torch.Generator().manual_seed(0)
    train_noise = GaussianDropout(p).train()
    train_noise.eval()
    assert torch.equal(train_noise(torch.ones(3)), torch.ones(3))
    out = F.gaussian_dropout(torch.ones(n), p, generator=gen).double()
    assert abs(out.mean() - 1) < z_bound() * math.sqrt(var / n)


def test_dropconnect_is_unbiased_and_eval_is_linear():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = DropConnectLinear(6, 3, p=0.5)  # its initialisation draws from torch's generator
    x = torch.randn(2, 6, generator=seeded(4))
    linear = nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.allclose(layer.eval()(x), linear)
    s = 20_000
    y = F.mc_dropconnect_linear(x, keys(8, s, 2), layer.weight, layer.bias, 0.5).view(s, 2, 3).double()
    # Var[y_o] = sum_i (w_oi x_i)^2 * p / (1 - p) for independent weight masks.
    sd = ((layer.weight.unsqueeze(0) * x.unsqueeze(1)) ** 2).sum(-1).sqrt().double()
    z = (y.mean(0) - linear.double()) / (sd / math.sqrt(s))
    assert z.abs().max() < z_bound(ALPHA / 6)


@pytest.mark.parametrize("cls", [Dropout, ChannelDropout, GaussianDropout])
def test_eval_is_identity(cls):
    x = torch.randn(4, 3, 5, generator=seeded(1))
    assert torch.equal(cls(0.4).eval()(x), x)


def test_p_zero_identity_and_p_one_zeros():
    x = torch.randn(10, 7, generator=seeded(2))
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert torch.equal(F.mc_dropout(x, keys(0, 2, 10), 1.0), torch.zeros(20, 7))
    assert torch.equal(F.mc_dropout(x, keys(0, 2, 10), 0.0), x.repeat(2, 1))
    y = x.clone()
    assert Dropout(1.0, inplace=True).train()(y) is y and torch.equal(y, torch.zeros_like(x))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_invalid_p_raises_naming_the_value(bad):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        Dropout(bad)


def test_non_numeric_p_raises():
    with pytest.raises(ValueError, match=r"real number.*'half'"):
        Dropout("half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        GaussianDropout(1.0)


def test_channel_dropout_needs_channels():
    with pytest.raises(ValueError, match=r"\(N, C, \*\)"):
        ChannelDropout(0.5).train()(torch.ones(4, 3))
