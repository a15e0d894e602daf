"""The MC engine: the model untouched, reproducibility, prefix sharing, chunking, the registry, guardrails."""

import math
import threading

import pytest
import torch
from scipy import stats
from torch import nn

from mcdrop import DropConnectLinear, DropoutConfigError, DropoutMLP, GaussianDropout, MCEngine, SamplingCancelled
from mcdrop.sampling import functional as F
from mcdrop.sampling.engine import dropout_layers, keyed_function, register_dropout
from mcdrop.sampling.layers import MCDropoutLayer
from tests.conftest import ALPHA, z_bound
from tests.tolerances import assert_outputs_close


def mlp(seed: int = 0, **kwargs) -> DropoutMLP:
    torch.manual_seed(seed)
    return DropoutMLP(20, [32, 32], 4, dropout=[0.2, 0.5], **kwargs)


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_deterministic_equals_eval_forward_and_leaves_train_mode():
    model = mlp().train()
    x = torch.randn(7, 20)
    out = MCEngine(model).deterministic(x)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(out, model.eval()(x))


def test_batchnorm_uses_running_statistics_and_is_left_alone():
    """With dropout only before a linear output, the MC mean is the eval-mode output: BatchNorm must have used
    its running statistics (a train-mode BatchNorm normalises by the batch and lands far off)."""
    torch.manual_seed(1)
    model = WithBatchNorm().train()
    bn = model.net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 6)
    samples = MCEngine(model).sample(x, 4000, seed=0).double()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched
    assert model.training and bn.training  # the caller's modes untouched
    with torch.no_grad():
        eval_out = model.eval()(x).double()
        train_bn = model.train()(x).double()
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    assert ((samples.mean(0) - eval_out).abs() <= z_bound(ALPHA / 15) * stderr).all()
    assert ((train_bn - eval_out).abs() > 10 * stderr).any()  # the check can tell the two modes apart


def test_model_is_never_touched_even_when_forward_raises():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)
            self.armed = False

        def forward(self, x):
            x = self.drop(x)
            if self.armed:
                raise RuntimeError("boom")
            return x

    model = Exploding().train()
    engine = MCEngine(model)
    engine.sample(torch.randn(2, 3), 2, seed=0)  # the probe passes
    model.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        engine.sample(torch.randn(2, 3), 2, seed=0)
    assert model.training and model.drop.training
    assert "forward" not in model.drop.__dict__ and not model.drop._forward_hooks and not model._forward_hooks


def test_replica_follows_weights_loaded_into_the_model():
    model, x = mlp(), torch.randn(3, 20)
    engine = MCEngine(model)
    first = engine.sample(x, 10, seed=1)
    model.load_state_dict(mlp(seed=5).state_dict())
    with torch.no_grad():
        model.net[0].bias.add_(1.0)
    assert not torch.equal(first, engine.sample(x, 10, seed=1))
    assert_outputs_close(engine.sample(x, 10, seed=1), MCEngine(model).sample(x, 10, seed=1))
    model.net[2] = nn.ReLU()  # a replaced module: the engine rebuilds its replica
    assert_outputs_close(engine.deterministic(x), model.eval()(x).detach())


def test_concurrent_calls_need_no_lock():
    engine, x = MCEngine(mlp()), torch.randn(16, 20)
    want = {seed: engine.sample(x, 30, seed=seed) for seed in range(8)}
    got: dict[int, torch.Tensor] = {}

    def run(seed: int) -> None:
        for _ in range(5):
            got[seed] = engine.sample(x, 30, seed=seed)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in range(8):
        assert_outputs_close(got[seed], want[seed])


def test_global_rng_untouched():
    engine, x = MCEngine(mlp()), torch.randn(3, 20)
    state = torch.get_rng_state()
    engine.sample(x, 10)
    assert torch.equal(state, torch.get_rng_state())


def test_same_seed_bit_identical_different_seed_differs_unseeded_random():
    engine = MCEngine(mlp())
    x = torch.randn(6, 20)
    a = engine.sample(x, 20, seed=11)
    assert torch.equal(a, engine.sample(x, 20, seed=11))
    assert not torch.equal(a, engine.sample(x, 20, seed=12))
    assert not torch.equal(engine.sample(x, 20), engine.sample(x, 20))


@pytest.mark.parametrize("budget", [1, 32 * 7, 32 * 50, 10**9])
def test_seeded_results_independent_of_chunk_size(budget):
    model = mlp()
    x = torch.randn(9, 20)
    reference = MCEngine(model).sample(x, 40, seed=5)
    assert_outputs_close(MCEngine(model, element_budget=budget).sample(x, 40, seed=5), reference)


def test_seeded_results_independent_of_batch_composition():
    engine = MCEngine(mlp())
    x = torch.randn(5, 20)
    alone = engine.sample(x[2:3], 30, seed=3, rows=torch.tensor([2]))
    other = torch.randn(5, 20)
    other[2] = x[2]
    for batch in (x, other):
        assert_outputs_close(engine.sample(batch, 30, seed=3)[:, 2:3], alone)


def test_seeded_results_agree_across_thread_counts():
    """Another thread count splits the sums differently: equal within float32 rounding (tests/tolerances.py)."""
    engine, x = MCEngine(mlp()), torch.randn(33, 20)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = engine.sample(x, 40, seed=8)
        torch.set_num_threads(max(2, before))
        many = engine.sample(x, 40, seed=8)
    finally:
        torch.set_num_threads(before)
    assert_outputs_close(one, many)


def test_per_row_seeds_equal_separate_calls():
    """Requests with different seeds can share one call: row seeds give the answers of separate calls."""
    engine = MCEngine(mlp())
    x = torch.randn(4, 20)
    joint = engine.sample(x, 12, seed=torch.tensor([5, 5, 9, 9]), rows=torch.tensor([0, 1, 0, 1]))
    assert_outputs_close(joint[:, :2], engine.sample(x[:2], 12, seed=5))
    assert_outputs_close(joint[:, 2:], engine.sample(x[2:], 12, seed=9))


def test_prefix_sharing_equals_replicated_input():
    model = mlp(input_dropout=0.0)
    x = torch.randn(8, 20)
    shared = MCEngine(model, share_prefix=True).sample(x, 25, seed=9)
    assert_outputs_close(shared, MCEngine(model, share_prefix=False).sample(x, 25, seed=9))


def test_prefix_sharing_matches_training_mode_loop_in_distribution():
    """Engine samples and a plain loop of train-mode passes come from the same distribution (KS test)."""
    model = mlp(3)
    x = torch.randn(1, 20)
    n = 3000
    engine_out = MCEngine(model).sample(x, n, seed=1)[:, 0, :]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        z = (x - model.input_shift) / model.input_scale
        h1 = F.dropout(torch.relu(model.net[0](z.expand(n, -1))), 0.2, generator=gen)
        h2 = F.dropout(torch.relu(model.net[3](h1)), 0.5, generator=gen)
        loop_out = model.net[6](h2) / model.temperature
    for c in range(4):  # one test per output
        assert stats.ks_2samp(engine_out[:, c].numpy(), loop_out[:, c].numpy()).pvalue > ALPHA / 4


def test_deterministic_mode_matches_mc_mean_for_linear_dropout_path():
    """With dropout only before a linear output layer, E[output] equals the eval output (inverted dropout)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    engine = MCEngine(model)
    x = torch.randn(1, 5)
    s = engine.sample(x, 20_000, seed=0)[:, 0, 0].double()
    det = engine.deterministic(x)[0, 0].item()
    assert abs(s.mean().item() - det) < z_bound() * s.std().item() / math.sqrt(s.numel())


def test_third_party_model_with_torch_dropout_layers():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.drop2d = nn.Dropout2d(0.3)
            self.fc = nn.Linear(4 * 6 * 6, 3)
            self.drop = nn.Dropout(0.2)

        def forward(self, x):
            h = self.drop2d(torch.relu(self.conv(x)))
            return self.fc(self.drop(h.flatten(1)))

    torch.manual_seed(0)
    model = Conv()
    assert [name for name, _ in dropout_layers(model)] == ["drop2d", "drop"]
    samples = MCEngine(model).sample(torch.randn(3, 1, 8, 8), 16, seed=1)
    assert samples.shape == (16, 3, 3) and (samples.std(0) > 0).all()


def test_gaussian_and_dropconnect_layers_take_part():
    torch.manual_seed(0)
    model = nn.Sequential(DropConnectLinear(4, 8, p=0.3), nn.ReLU(), GaussianDropout(0.2), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    s = MCEngine(model, element_budget=64).sample(x, 12, seed=2)
    assert s.shape == (12, 3, 2) and (s.std(0) > 0).all()
    assert_outputs_close(s, MCEngine(model).sample(x, 12, seed=2))


def test_registry_takes_a_new_dropout_class():
    class MyDropout(nn.Module):  # not a subclass of any registered class
        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x):
            return x

    model = nn.Sequential(nn.Linear(3, 8), MyDropout(0.5), nn.Linear(8, 2))
    assert keyed_function(model[1]) is None
    with pytest.raises(DropoutConfigError, match="register_dropout"):
        MCEngine(model).sample(torch.randn(2, 3), 4)
    register_dropout(MyDropout, lambda m, x, keys: F.mc_dropout(x, keys, m.p))
    try:
        assert (MCEngine(model).sample(torch.randn(2, 3), 8, seed=0).std(0) > 0).all()
    finally:
        from mcdrop.sampling import engine as E

        E._REGISTRY.pop(MyDropout)


def test_deterministic_features_capture_hidden_layers():
    model, x = mlp(), torch.randn(4, 20)
    engine = MCEngine(model)
    out, features = engine.deterministic_features(x, ["net.1", "net.4"])
    with torch.no_grad():
        h1 = torch.relu(model.net[0]((x - model.input_shift) / model.input_scale))
    assert torch.equal(out, engine.deterministic(x)) and torch.allclose(features["net.1"], h1)
    assert features["net.4"].shape == (4, 32)
    with pytest.raises(ValueError, match=r"no module named 'net\.9'"):
        engine.deterministic_features(x, ["net.9"])


def test_cancelled_sampling_stops_between_chunks():
    engine, x = MCEngine(mlp(), element_budget=32 * 10), torch.randn(3, 20)
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(SamplingCancelled, match="stopped after"):
        engine.sample(x, 100, seed=0, cancelled=cancelled)
    assert len(calls) == 3


def test_no_dropout_layer_is_a_clear_error():
    engine = MCEngine(nn.Linear(3, 2))
    with pytest.raises(DropoutConfigError, match="has no dropout module"):
        engine.sample(torch.randn(2, 3), 5)
    assert engine.deterministic(torch.randn(2, 3)).shape == (2, 2)


def test_all_zero_dropout_is_a_clear_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.Linear(4, 2))
    with pytest.raises(DropoutConfigError, match="p = 0"):
        MCEngine(model).sample(torch.randn(2, 3), 5)


def test_functional_dropout_in_forward_is_detected():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)
            self.unused = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc2(nn.functional.dropout(torch.relu(self.fc1(x)), 0.4, self.training))

    with pytest.raises(DropoutConfigError, match=r"calls dropout\(p=0.4\)"):
        MCEngine(Functional()).sample(torch.randn(2, 3), 5)


def test_dropout_not_on_the_output_path_is_detected():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(DropoutConfigError, match="none of the 1 dropout modules"):
        MCEngine(Unused()).sample(torch.randn(2, 3), 5)


def test_skip_connection_around_dropout_is_detected_and_replicated():
    """The probe finds that the prefix cannot be shared and replicates the input: right answers, no error."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return x + self.drop(self.fc(x))

    torch.manual_seed(0)
    model, x = Residual(), torch.randn(3, 4)
    auto = MCEngine(model).sample(x, 6, seed=0)
    assert_outputs_close(auto, MCEngine(model, share_prefix=False).sample(x, 6, seed=0))
    with pytest.raises(RuntimeError):
        MCEngine(model, share_prefix=True).sample(x, 6, seed=0)


def test_large_n_runs_in_bounded_chunks():
    engine = MCEngine(mlp(), element_budget=1 << 14)
    x = torch.randn(4, 20)
    s = engine.sample(x, 10_000, seed=0)
    assert s.shape == (10_000, 4, 4)
    assert_outputs_close(s[:50], MCEngine(mlp()).sample(x, 50, seed=0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 0}, "n_samples has to be a positive int"),
        ({"n_samples": 2, "rows": torch.tensor([0])}, "one position per input row"),
        ({"n_samples": 2, "first_sample": 2**32 - 1}, r"sample indices have to be in \[0, 2\*\*32\)"),
        ({"n_samples": 2, "seed": torch.tensor([1])}, r"per-row seeds need shape \(2,\)"),
    ],
)
def test_invalid_sample_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MCEngine(mlp()).sample(torch.randn(2, 20), **kwargs)


# ---------------------------------------------------------------------------------------------- CNN


def cnn() -> nn.Module:
    from mcdrop.nets.models import DropoutCNN

    torch.manual_seed(5)
    model = DropoutCNN((12, 12), 3, channels=(6, 8), hidden=(16,), channel_dropout=(0.3, 0.2), dropout=0.4)
    with torch.no_grad():  # running statistics that are not the identity, so eval-mode BatchNorm matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_cnn_channel_masks_are_constant_within_each_channel():
    """Under MC, the first channel dropout's output is its input times 0 or 1/(1-p) per (sample, row, channel),
    the same at every position of the map; the share of dropped maps is p (binomial test).  The generic path,
    whose layers run as modules (the CNN's fast path, tests/nets/test_cnn_plan.py, draws the same masks)."""
    model = cnn()
    captured = {}
    layer = model.net[4]
    hook = layer.register_forward_hook(lambda m, args, out: captured.update(x=args[0], y=out))
    s, b = 200, 4
    MCEngine(model, fast=False).sample(torch.rand(b, 144), s, seed=3)
    hook.remove()
    x, y = captured["x"], captured["y"]  # the prefix ran once per row; the layer expanded to (S*B, C, H, W)
    assert x.shape[0] == b and y.shape[0] == s * b
    x = x.repeat(s, 1, 1, 1)
    live = x != 0
    ratio = torch.where(live, y / torch.where(live, x, 1.0), torch.nan).flatten(2)  # (S*B, C, H*W)
    lo, hi = ratio.nan_to_num(nan=math.inf).amin(-1), ratio.nan_to_num(nan=-math.inf).amax(-1)
    seen = live.flatten(2).any(-1)  # maps with at least one nonzero input
    lo, hi = lo[seen], hi[seen]
    assert torch.allclose(lo, hi, atol=1e-6)  # one factor per map
    kept = lo != 0
    assert torch.allclose(lo[kept], torch.full_like(lo[kept], 1 / 0.7))
    dropped, trials = int((~kept).sum()), lo.numel()
    assert stats.binomtest(dropped, trials, 0.3).pvalue > ALPHA


def test_cnn_prefix_sharing_equals_replicated_input_and_a_plain_loop_in_distribution():
    """The engine runs the first block once per row and expands at the first channel dropout: the samples equal
    those of the replicated input, and match a plain loop of passes with the dropout layers in training mode and
    BatchNorm in eval mode, on n copies of the rows (KS test per output)."""
    model = cnn()
    x = torch.rand(2, 144)
    n = 3000
    shared = MCEngine(model).sample(x, n, seed=1)
    assert_outputs_close(shared, MCEngine(model, share_prefix=False).sample(x, n, seed=1))
    loop = model.__class__(**{k: v for k, v in model.config().items() if k != "kind"})
    loop.load_state_dict(model.state_dict())
    loop.eval()
    for m in loop.modules():
        if isinstance(m, MCDropoutLayer):
            m.train()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(2)
        looped = loop(x.repeat(n, 1)).view(n, 2, 3)  # every row of the batch draws its own masks
    for row in range(2):
        for c in range(3):
            assert stats.ks_2samp(shared[:, row, c].numpy(), looped[:, row, c].numpy()).pvalue > ALPHA / 6
