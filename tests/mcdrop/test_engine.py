"""The MC engine: modes, state, reproducibility, prefix sharing, chunking, guardrails, adaptivity."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from mcdrop import DropConnectLinear, DropoutConfigError, DropoutMLP, GaussianDropout, MCEngine
from tests.conftest import ALPHA, z_bound
from tests.tolerances import assert_outputs_close, assert_probabilities_close


def mlp(seed: int = 0, **kwargs) -> DropoutMLP:
    torch.manual_seed(seed)
    return DropoutMLP(20, [32, 32], 4, dropout=[0.2, 0.5], **kwargs)


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_deterministic_equals_eval_forward_and_restores_train_mode():
    model = mlp().train()
    x = torch.randn(7, 20)
    out = MCEngine(model).deterministic(x)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(out, model.eval()(x))


def test_batchnorm_statistics_and_modes_untouched_by_mc():
    torch.manual_seed(1)
    model = WithBatchNorm().train()
    bn = model.net[1]
    bn.running_mean.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = MCEngine(model, task="classification").sample(torch.randn(5, 6), 30, seed=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and bn.training
    # BatchNorm ran in eval mode: the mean over samples matches eval-mode BN with dropout averaged out.
    assert samples.shape == (30, 5, 3)


def test_state_restored_when_forward_raises():
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
    engine = MCEngine(model, task="classification")
    engine.sample(torch.randn(2, 3), 2, seed=0)  # probe passes
    model.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        engine.sample(torch.randn(2, 3), 2, seed=0)
    assert model.training and model.drop.training
    assert "forward" not in model.drop.__dict__


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
    chunked = MCEngine(model, element_budget=budget).sample(x, 40, seed=5)
    assert_outputs_close(chunked, reference)


def test_seeded_results_independent_of_batch_composition():
    engine = MCEngine(mlp())
    x = torch.randn(5, 20)
    alone = engine.run(x[2:3], n_samples=30, seed=3, rows=torch.tensor([2]))
    together = engine.run(x, n_samples=30, seed=3)
    other = torch.randn(5, 20)
    other[2] = x[2]
    neighbours_changed = engine.run(other, n_samples=30, seed=3)
    for result in (together, neighbours_changed):
        assert_probabilities_close(result.summary.probabilities[2], alone.summary.probabilities[0])
        assert_probabilities_close(result.summary.mutual_information[2], alone.summary.mutual_information[0])


def test_seeded_results_agree_across_thread_counts():
    """Another thread count splits the sums differently: equal within float32 rounding (tests/tolerances.py)."""
    engine, x = MCEngine(mlp()), torch.randn(33, 20)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = engine.run(x, n_samples=40, seed=8, return_samples=True)
        torch.set_num_threads(max(2, before))
        many = engine.run(x, n_samples=40, seed=8, return_samples=True)
    finally:
        torch.set_num_threads(before)
    assert_outputs_close(one.samples, many.samples)
    assert_probabilities_close(one.summary.probabilities, many.summary.probabilities)
    assert_probabilities_close(one.summary.mutual_information, many.summary.mutual_information)


def test_prefix_sharing_equals_replicated_input():
    model = mlp(input_dropout=0.0)
    x = torch.randn(8, 20)
    shared = MCEngine(model).sample(x, 25, seed=9)
    replicated = MCEngine(model, share_prefix=False).sample(x, 25, seed=9)
    assert_outputs_close(shared, replicated)


def test_prefix_sharing_matches_training_mode_loop_in_distribution():
    """Engine samples and a plain loop of train-mode passes come from the same distribution (KS test)."""
    model = mlp(3)
    x = torch.randn(1, 20)
    n = 3000
    engine_out = MCEngine(model).sample(x, n, seed=1)[:, 0, :]
    torch.manual_seed(2)
    model.train()
    with torch.no_grad():
        loop_out = torch.cat([model(x) for _ in range(n)])
    alpha = ALPHA / 4  # one test per output
    for c in range(4):
        assert stats.ks_2samp(engine_out[:, c].numpy(), loop_out[:, c].numpy()).pvalue > alpha


def test_deterministic_mode_matches_mc_mean_for_linear_dropout_path():
    """With dropout only before a linear output layer, E[output] equals the eval output (inverted dropout)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    engine = MCEngine(model, task="homoscedastic", tau=1.0)
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
    engine = MCEngine(Conv(), task="classification")
    x = torch.randn(3, 1, 8, 8)
    result = engine.run(x, n_samples=16, seed=1, return_samples=True)
    assert result.samples.shape == (16, 3, 3)
    assert (result.summary.mutual_information > 0).all()


def test_gaussian_and_dropconnect_layers_take_part():
    torch.manual_seed(0)
    model = nn.Sequential(DropConnectLinear(4, 8, p=0.3), nn.ReLU(), GaussianDropout(0.2), nn.Linear(8, 2))
    engine = MCEngine(model, task="classification", element_budget=64)
    x = torch.randn(3, 4)
    s = engine.sample(x, 12, seed=2)
    assert s.shape == (12, 3, 2) and (s.std(0) > 0).all()
    assert_outputs_close(s, MCEngine(model, task="classification").sample(x, 12, seed=2))


def test_no_dropout_layer_is_a_clear_error():
    engine = MCEngine(nn.Linear(3, 2), task="classification")
    with pytest.raises(DropoutConfigError, match="has no dropout module"):
        engine.sample(torch.randn(2, 3), 5)
    assert engine.deterministic(torch.randn(2, 3)).shape == (2, 2)


def test_all_zero_dropout_is_a_clear_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.Linear(4, 2))
    with pytest.raises(DropoutConfigError, match="p = 0"):
        MCEngine(model, task="classification").sample(torch.randn(2, 3), 5)


def test_functional_dropout_in_forward_is_detected():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)
            self.unused = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc2(nn.functional.dropout(torch.relu(self.fc1(x)), 0.4, self.training))

    with pytest.raises(DropoutConfigError, match=r"calls dropout\(p=0.4\)"):
        MCEngine(Functional(), task="classification").sample(torch.randn(2, 3), 5)


def test_dropout_not_on_the_output_path_is_detected():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(DropoutConfigError, match="none of the 1 dropout modules"):
        MCEngine(Unused(), task="classification").sample(torch.randn(2, 3), 5)


def test_skip_connection_around_dropout_needs_share_prefix_false():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return x + self.drop(self.fc(x))

    x = torch.randn(3, 4)
    with pytest.raises(DropoutConfigError, match="share_prefix=False"):
        MCEngine(Residual(), task="classification").sample(x, 4, seed=0)
    assert MCEngine(Residual(), task="classification", share_prefix=False).sample(x, 4, seed=0).shape == (4, 3, 4)


def test_large_n_runs_in_bounded_chunks():
    engine = MCEngine(mlp(), element_budget=1 << 14)
    x = torch.randn(4, 20)
    s = engine.sample(x, 10_000, seed=0)
    assert s.shape == (10_000, 4, 4)
    assert_outputs_close(s[:50], MCEngine(mlp()).sample(x, 50, seed=0))


def test_adaptive_sampling_reaches_tolerance_and_reports_n():
    engine = MCEngine(mlp())
    x = torch.randn(6, 20)
    result = engine.run(x, n_samples=16, tolerance=0.01, max_samples=4096, seed=4, return_samples=True)
    used = result.summary.n_samples
    assert (used >= 16).all() and (used <= 4096).all()
    stderr = result.summary.probability_stderr.amax(-1)
    assert ((stderr <= 0.01) | (used == 4096)).all()
    # Adaptive rows are the first n samples of the fixed-N call with the same seed.
    row, n = 0, int(used[0])
    fixed = engine.run(x, n_samples=n, seed=4)
    assert_probabilities_close(result.summary.probabilities[row], fixed.summary.probabilities[row])


def test_adaptive_respects_cap():
    result = MCEngine(mlp()).run(torch.randn(2, 20), n_samples=8, tolerance=1e-9, max_samples=64, seed=0)
    assert result.summary.n_samples.tolist() == [64, 64]


def test_regression_run_homoscedastic_uses_tau():
    torch.manual_seed(0)
    model = DropoutMLP(3, [16], 1, head="homoscedastic", tau=4.0, dropout=0.3)
    result = MCEngine(model).run(torch.randn(5, 3), n_samples=50, seed=0, level=0.9)
    s = result.summary
    assert torch.allclose(s.aleatoric_variance, torch.full((5,), 0.25))
    assert torch.allclose(s.variance, s.aleatoric_variance + s.epistemic_variance)
    assert (s.interval_low < s.mean).all() and (s.mean < s.interval_high).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 0}, "n_samples has to be a positive int"),
        ({"mode": "bayes"}, "is not a valid Mode"),
        ({"tolerance": -1.0}, "tolerance has to be a positive"),
    ],
)
def test_invalid_run_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MCEngine(mlp()).run(torch.randn(2, 20), **kwargs)


def test_per_row_seeds_equal_separate_calls():
    """Requests with different seeds can share one call: row seeds give the answers of separate calls."""
    engine = MCEngine(mlp())
    x = torch.randn(4, 20)
    joint = engine.sample(x, 12, seed=torch.tensor([5, 5, 9, 9]), rows=torch.tensor([0, 1, 0, 1]))
    assert_outputs_close(joint[:, :2], engine.sample(x[:2], 12, seed=5))
    assert_outputs_close(joint[:, 2:], engine.sample(x[2:], 12, seed=9))
