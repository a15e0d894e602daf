"""The DropoutCNN fast path (mcdrop/nets/cnn_plan.py): the generic path's answers within float32 rounding for the
forms it takes, the masks' distribution, and the models it leaves to the generic path."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from mcdrop import MCEngine
from mcdrop.nets import cnn_plan
from mcdrop.nets.cnn_plan import CNNPlan
from mcdrop.nets.models import DropoutCNN
from mcdrop.sampling import kernels, winograd
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
    """(fast path, generic path) samples; fails unless the plan answered every chunk itself."""
    fast, generic = MCEngine(m), MCEngine(m, fast=False)
    plan = fast._fast_path()
    assert isinstance(plan, CNNPlan), "the CNN plan was not built"
    answers = []
    sample = plan.sample
    plan.sample = lambda *args: answers.append(sample(*args)) or answers[-1]  # type: ignore[method-assign]
    got = fast.sample(x, n, **kwargs)
    assert answers and all(a is not None for a in answers), "the plan declined"
    return got, generic.sample(x, n, **kwargs)


@pytest.mark.parametrize("kwargs", [
    {},                                                                    # the shipped models' form
    {"convs_per_block": 1, "channels": (3, 5, 7), "channel_dropout": (0.5, 0.1, 0.2), "hidden": (9, 8)},
    {"convs_per_block": 1, "channels": (3, 4, 5), "channel_dropout": (0.0, 0.75, 0.2)},  # first dropout: block 2
    {"image_shape": (7, 9), "channels": (2, 3), "channel_dropout": (5 / 256, 0.5)},  # odd sizes, 8- and 1-bit lanes
    {"image_shape": (16, 22), "channels": (3, 5, 17), "channel_dropout": (0.2, 0.3, 0.1)},  # fused kernel thrice
    {"image_shape": (9, 13), "channels": (4, 6, 5), "channel_dropout": (0.0, 0.25, 0.5)},   # first dropout: block 2
])
def test_equals_generic_path(kwargs):
    m = model(**kwargs)
    x = torch.rand(7, m.in_features)
    got, want = both(m, x, 23, seed=4)
    assert_outputs_close(got, want)


def test_any_kernel_padding_and_a_bias_at_the_mixed_convolution():
    m = model(convs_per_block=1)
    with torch.no_grad():
        m.net[5] = nn.Conv2d(4, 6, (3, 5), padding=(0, 2), bias=True).to(memory_format=torch.channels_last)
        m.net[5].bias.uniform_(-0.3, 0.3)
    m.image_shape = [12, 12]  # block 2 sees 6 x 6, the unpadded 3-row kernel gives 4 x 6, pooled to 2 x 3
    m.net[-4] = nn.Linear(6 * 2 * 3, 16)
    x = torch.rand(5, 144)
    assert_outputs_close(*both(m, x, 13, seed=8))


def test_rows_held_in_groups_give_the_same_answers(monkeypatch):
    """The per-channel maps of a chunk's rows are held a group of rows at a time, within the element budget."""
    m = model()
    x = torch.rand(9, m.in_features)
    seeds = torch.arange(9) * 7
    want = MCEngine(m, fast=False).sample(x, 11, seed=seeds)
    monkeypatch.setattr(cnn_plan.runtime, "element_budget_for", lambda device: 2500)  # two rows a group
    got, _ = both(m, x, 11, seed=seeds)
    assert_outputs_close(got, want)


def test_the_shipped_classifier_equals_the_generic_path():
    from mcdrop.nets.artifacts import load_artifact
    m = load_artifact("fashion-cnn").model
    x = torch.rand(3, m.in_features)
    got, want = both(m, x, 9, seed=11)
    assert_outputs_close(got, want)
    if winograd.load() is not None:  # both blocks' second convolution, their pooling and ReLU in the fused kernel
        folded = MCEngine(m)._fast_path()._current()
        assert [id(m.net[i]) for i in (3, 11)] == list(folded.pooled)


def test_without_the_fused_convolution_the_plan_runs_torch_convolutions(monkeypatch):
    """No compiler, a failed build or MCDROP_KERNELS=0: the plan folds and mixes as before, and convolves with
    torch."""
    m = model(image_shape=(16, 22), channels=(3, 5, 17), channel_dropout=(0.2, 0.3, 0.1))
    x = torch.rand(6, m.in_features)
    with_kernel, want = both(m, x, 13, seed=2)
    monkeypatch.setenv("MCDROP_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    assert winograd.load() is None
    got, _ = both(m, x, 13, seed=2)
    assert not MCEngine(m)._fast_path()._current().pooled
    assert_outputs_close(got, want)
    assert_outputs_close(with_kernel, want)


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


def test_follows_replaced_parameters_and_buffers():
    m = model()
    engine, generic = MCEngine(m), MCEngine(m, fast=False)
    x = torch.rand(3, m.in_features)
    engine.sample(x, 5, seed=1)
    conv = m.net[8]
    conv.weight = nn.Parameter(torch.randn_like(conv.weight))
    m.net[9].running_mean = torch.full_like(m.net[9].running_mean, 0.4)
    assert_outputs_close(engine.sample(x, 7, seed=2), generic.sample(x, 7, seed=2))


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
    for conv in ({"padding": "same"}, {"padding_mode": "reflect", "padding": 1}, {"stride": 2, "padding": 1},
                 {"dilation": 2, "padding": 2}):
        m = model()
        m.net[8] = nn.Conv2d(4, 6, 3, **conv)
        assert CNNPlan.for_model(m) is None, conv
    m = model()
    m.net[3].padding_mode = "circular"  # anywhere, not only at the mixed convolution
    assert CNNPlan.for_model(m) is None
    m = model()
    m.net[19] = m.net[15]  # one dropout module twice: the generic path keys its second call apart
    assert CNNPlan.for_model(m) is None
    m = model()
    m.net[7].p = 0.0
    engine = MCEngine(m)
    x = torch.rand(2, m.in_features)
    assert_outputs_close(engine.sample(x, 4, seed=0), MCEngine(m, fast=False).sample(x, 4, seed=0))


def test_a_model_with_forward_hooks_is_left_to_the_generic_path():
    """The generic path runs the caller's hooks (on its copy of the tree); the plan does not, so it declines."""
    m = model()
    seen = []
    m.net[17].register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    engine = MCEngine(m)
    x = torch.rand(2, m.in_features)
    engine.sample(x, 3, seed=0)
    assert seen[-1] == 6  # S x B rows, on the generic path
    plan = engine._fast_path()
    assert plan is not None and plan.sample(x, 0, torch.arange(2), torch.arange(3)) is None
