"""MCEngine's functional dropout (opt-in) and keyed alpha dropout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as TF

from mcdrop.sampling import functional as F
from mcdrop.sampling import rng
from mcdrop.sampling.engine import DropoutConfigError, MCEngine
from tests.conftest import z_bound


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 32), nn.Linear(32, 3)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc1(x)))
        return self.fc2(TF.dropout(h, 0.2, self.training))


class Modules(Functional):
    """The same network with the functional call as a module registered after the others."""

    def __init__(self) -> None:
        super().__init__()
        self.drop2 = nn.Dropout(0.2)

    def forward(self, x):
        return self.fc2(self.drop2(self.drop(torch.relu(self.fc1(x)))))


def test_functional_calls_are_keyed_after_the_modules():
    torch.manual_seed(0)
    fn = Functional().eval()
    mod = Modules().eval()
    mod.load_state_dict(fn.state_dict(), strict=False)
    x = torch.randn(6, 5)
    got = MCEngine(fn, functional_dropout=True).sample(x, 16, seed=3)
    assert torch.equal(got, MCEngine(mod).sample(x, 16, seed=3))
    assert not torch.equal(got[0], got[1])
    with pytest.raises(DropoutConfigError, match="functional_dropout=True"):
        MCEngine(fn).sample(x, 4, seed=3)


def test_keyed_alpha_dropout_takes_torchs_two_values_at_rate_p():
    p, n = 0.25, 200_000
    keys = rng.stream_keys(rng.seed_key(1), (0, 0), torch.arange(1), torch.arange(1))
    got = F.mc_alpha_dropout(torch.zeros(1, n), keys, p)
    theirs = TF.alpha_dropout(torch.zeros(n), p, training=True)
    assert set(got.unique().tolist()) == set(theirs.unique().tolist())  # the same kept and dropped values
    dropped = float((got < got.max()).double().mean())
    assert abs(dropped - p) < z_bound() * math.sqrt(p * (1 - p) / n)


def test_keyed_alpha_dropout_keeps_zero_mean_unit_variance():
    n = 400_000
    x = torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    keys = rng.stream_keys(rng.seed_key(2), (0, 0), torch.arange(1), torch.arange(1))
    y = F.mc_alpha_dropout(x, keys, 0.1).double()
    # the units are iid with mean 0 and variance 1: standard errors sqrt(var / n) and sqrt((m4 - var^2) / n)
    var, m4 = float(y.var()), float((y - y.mean()).pow(4).mean())
    assert abs(float(y.mean())) < z_bound() * math.sqrt(var / n)
    assert abs(var - 1.0) < z_bound() * math.sqrt((m4 - var**2) / n)
    feature = F.mc_alpha_dropout(torch.ones(2, 3, 4), rng.stream_keys(rng.seed_key(0), (0, 0), torch.arange(2),
                                                                      torch.arange(5)), 0.5, feature=True)
    assert feature.shape == (10, 3, 4) and bool((feature == feature[..., :1]).all())  # one value per channel
