"""The consistent-mask mode: one network per pass for every row of a pool (MCEngine.sample(consistent=True))."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from mcdrop import DropConnectLinear, DropoutMLP, MCEngine
from mcdrop.sampling.layers import Dropout
from tests.conftest import ALPHA
from tests.tolerances import assert_outputs_close


def mlp(seed: int = 0) -> DropoutMLP:
    torch.manual_seed(seed)
    return DropoutMLP(20, [32, 32], 4, dropout=[0.2, 0.5], input_dropout=0.1)


@pytest.mark.parametrize("fast", [True, False])
def test_identical_rows_get_identical_samples_only_when_consistent(fast):
    x = torch.randn(1, 20).repeat(3, 1)
    engine = MCEngine(mlp(), fast=fast)
    same = engine.sample(x, 16, seed=4, consistent=True)
    assert torch.equal(same[:, 0], same[:, 1]) and torch.equal(same[:, 0], same[:, 2])
    default = engine.sample(x, 16, seed=4)
    assert not torch.equal(default[:, 0], default[:, 1])


@pytest.mark.parametrize("layer", ["dropout", "dropconnect"])
def test_every_row_of_a_pass_sees_the_same_network(layer):
    """A linear network with dropout is linear in its input for fixed masks: pass s maps a + b to
    f_s(a) + f_s(b) exactly when every row of the pass has the same masks."""
    torch.manual_seed(1)
    model = (nn.Sequential(Dropout(0.5), nn.Linear(6, 3, bias=False)) if layer == "dropout"
             else DropConnectLinear(6, 3, bias=False, p=0.5))
    a, b = torch.randn(2, 6)
    x = torch.stack([a, b, a + b])
    engine = MCEngine(model)
    s = engine.sample(x, 32, seed=7, consistent=True)
    assert_outputs_close(s[:, 2], s[:, 0] + s[:, 1])
    d = engine.sample(x, 32, seed=7)
    assert (d[:, 2] - d[:, 0] - d[:, 1]).abs().max() > 1e-3  # default mode: three different networks


def test_a_row_in_a_pool_equals_the_row_alone_and_chunking_is_irrelevant():
    x = torch.randn(9, 20)
    pool = MCEngine(mlp(), element_budget=64).sample(x, 12, seed=3, consistent=True)
    for i in (0, 4, 8):
        alone = MCEngine(mlp()).sample(x[i:i + 1], 12, seed=3, consistent=True)
        assert_outputs_close(pool[:, i], alone[:, 0])
    generic = MCEngine(mlp(), fast=False).sample(x, 12, seed=3, consistent=True)
    assert_outputs_close(pool, generic)


def test_consistent_refuses_row_positions():
    with pytest.raises(ValueError, match="rows has to be None"):
        MCEngine(mlp()).sample(torch.randn(2, 20), 2, seed=0, consistent=True, rows=torch.tensor([0, 1]))


def test_marginal_samples_of_a_row_are_distributed_as_in_the_default_mode():
    """Kolmogorov-Smirnov, two samples of 3000 passes of row 5 (different sample indices so the passes are
    independent between the modes): the consistent masks are another draw of the same Bernoulli masks."""
    torch.manual_seed(2)
    x = torch.randn(6, 20)
    engine = MCEngine(mlp())
    cons = engine.sample(x, 3000, seed=11, consistent=True)[:, 5].softmax(-1)
    default = engine.sample(x, 3000, seed=11, first_sample=3000)[:, 5].softmax(-1)
    for c in range(4):
        assert stats.ks_2samp(cons[:, c].numpy(), default[:, c].numpy()).pvalue > ALPHA / 4
    # and the test can fail: another row's distribution is told apart
    other = engine.sample(x, 3000, seed=11)[:, 0].softmax(-1)
    assert min(stats.ks_2samp(cons[:, c].numpy(), other[:, c].numpy()).pvalue for c in range(4)) < ALPHA
