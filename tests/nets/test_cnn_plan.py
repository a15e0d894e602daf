"""The DropoutCNN fast path (mcdrop/nets/cnn_plan.py): the generic path's answers within float32 rounding for the
forms it takes, the masks' distribution, and the models it leaves to the generic path."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from mcdrop import MCEngine
from mcdrop.nets.cnn_plan import CNNPlan
from mcdrop.nets.models import DropoutCNN
from tests.conftest import ALPHA
from tests.tolerances import assert_outputs_close


def model(seed: int = 0, **kwargs) -> DropoutCNN:
    """A small CNN with BatchNorm statistics, standardisation and a temperature that are not the identity."""
    torch.manual_seed(seed)
    kwargs = {"image_shape": (10, 12), "out_features": 5, "channels": (4, 6), "hidden": (16,),
              "channel_dropout": (0.25, 0.3), "dropout": 0.5, "convs_per_block": 2, **kwargs}
    m = DropoutCNN(**kwargs)
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        m.input_shift.fill_(0.3)
        m.input_scale.fill_(1.7)
        m.temperature.fill_(1.3)
    return m


def both(m: nn.Module, x: torch.Tensor, n: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    fast, generic = MCEngine(m), MCEngine(m, fast=False)
    assert isinstance(fast._fast_path(), CNNPlan), "the CNN plan was not built"
    return fast.sample(x, n, **kwargs), generic.sample(x, n, **kwargs)


@pytest.mark.parametrize("kwargs", [
    {},                                                                    # the shipped models' form
    {"convs_per_block": 1, "channels": (3, 5, 7), "channel_dropout": (0.5, 0.1, 0.2), "hidden": (9, 8)},
    {"convs_per_block": 1, "channels": (3, 4, 5), "channel_dropout": (0.0, 0.75, 0.2)},  # first dropout: block 2
    {"image_shape": (7, 9), "channels": (2, 3), "channel_dropout": (5 / 256, 0.5)},  # odd sizes, 8- and 1-bit lanes
])
def test_equals_generic_path(kwargs):
    m = model(**kwargs)
    x = torch.rand(7, m.in_features)
    got, want = both(m, x, 23, seed=4)
    assert_outputs_close(got, want)


def test_the_shipped_classifier_equals_the_generic_path():
    from mcdrop.nets.artifacts import load_artifact
    m = load_artifact("fashion-cnn").model
    x = torch.rand(3, m.in_features)
    got, want = both(m, x, 9, seed=11)
    assert_outputs_close(got, want)


def test_row_seeds_positions_first_sample_and_consistent_mode_follow_the_keys():
    m = model()
    x = torch.rand(4, m.in_features)
    kwargs = dict(seed=torch.tensor([5, 5, 9, 2**40]), rows=torch.tensor([0, 7, 3, 2**31 - 1]), first_sample=2**32 - 30)
    assert_outputs_close(*both(m, x, 30, **kwargs))
    assert_outputs_close(*both(m, x, 6, seed=2, consistent=True))


def test_bit_identical_on_repeat_and_independent_of_the_batch_around_a_row():
    m = model()
    engine = MCEngine(m)
    x = torch.rand(9, m.in_features)
    a = engine.sample(x, 40, seed=3)
    assert torch.equal(a, engine.sample(x, 40, seed=3))
    alone = engine.sample(x[4:5], 40, seed=3, rows=torch.tensor([4]))
    assert_outputs_close(a[:, 4:5], alone)


@pytest.mark.parametrize("budget", [1, 1000, 10**9])
def test_chunking_does_not_change_answers(budget):
    m = model()
    x = torch.rand(11, m.in_features)
    reference = MCEngine(m, fast=False).sample(x, 17, seed=6)
    assert_outputs_close(MCEngine(m, element_budget=budget).sample(x, 17, seed=6), reference)


def test_a_model_in_training_mode_is_sampled_with_its_running_statistics():
    m = model().train()
    x = torch.rand(5, m.in_features)
    got, want = both(m, x, 8, seed=1)
    assert_outputs_close(got, want)
    assert m.training  # the engine does not touch the caller's mode


def test_follows_weights_statistics_and_rates_changed_after_the_first_call():
    m = model()
    engine, generic = MCEngine(m), MCEngine(m, fast=False)
    x = torch.rand(3, m.in_features)
    engine.sample(x, 5, seed=1)
    convs = [mod for mod in m.net if isinstance(mod, nn.Conv2d)]
    bns = [mod for mod in m.net if isinstance(mod, nn.BatchNorm2d)]
    with torch.no_grad():
        convs[2].weight.mul_(-1.5)
        bns[3].running_var.mul_(3.0)
    drops = [mod for mod in m.net if type(mod).__name__ == "ChannelDropout"]
    drops[0].p = 0.6
    assert_outputs_close(engine.sample(x, 25, seed=2), generic.sample(x, 25, seed=2))
    drops[0].p = 0.0  # a rate the plan does not take: the generic path answers
    assert_outputs_close(engine.sample(x, 25, seed=2), generic.sample(x, 25, seed=2))


def test_same_distribution_as_a_training_mode_loop():
    """The plan's samples of one output and a loop of train-mode passes with torch's own masks pass a KS test."""
    m = model(3, channel_dropout=(0.3, 0.3), dropout=0.3)
    x = torch.rand(1, m.in_features)
    n = 3000
    fast = MCEngine(m).sample(x, n, seed=1)[:, 0, :]
    torch.manual_seed(2)
    with torch.no_grad():
        loop = torch.stack([_train_mode_pass(m, x) for _ in range(n)])[:, 0, :]
    for c in range(loop.shape[1]):
        assert stats.ks_2samp(fast[:, c].numpy(), loop[:, c].numpy()).pvalue > ALPHA / loop.shape[1]


def _train_mode_pass(m: DropoutCNN, x: torch.Tensor) -> torch.Tensor:
    """Dropout layers in training mode, BatchNorm in eval mode."""
    m.eval()
    for mod in m.modules():
        if type(mod).__name__ in ("ChannelDropout", "Dropout"):
            mod.train()
    try:
        return m(x)
    finally:
        m.eval()


def test_other_forms_and_dtypes_use_the_generic_path():
    class Sub(DropoutCNN):
        pass

    assert CNNPlan.for_model(Sub(channels=(3,), channel_dropout=0.2)) is None  # a subclass may change forward
    assert CNNPlan.for_model(model(channel_dropout=0.0)) is None  # the first dropout is the dense head's
    assert CNNPlan.for_model(model(channels=(3,), channel_dropout=0.2)) is None  # channel dropout, then Linear
    assert CNNPlan.for_model(model().double()) is None
    m = model()
    m.net[7].p = 0.0
    engine = MCEngine(m)
    x = torch.rand(2, m.in_features)
    assert_outputs_close(engine.sample(x, 4, seed=0), MCEngine(m, fast=False).sample(x, 4, seed=0))
