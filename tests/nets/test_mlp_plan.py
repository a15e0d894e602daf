"""The fused DropoutMLP path (mcdrop/nets/mlp_plan.py, kernels.c): the generic path's answers within float32
rounding for every form it takes, the same distribution as a training-mode loop, and its fallbacks."""

from __future__ import annotations

import logging
import platform

import pytest
import torch
from scipy import stats
from torch import nn

from mcdrop import DropoutMLP, MCEngine
from mcdrop.nets import mlp_plan
from mcdrop.sampling import functional as F
from mcdrop.sampling import kernels
from tests.conftest import ALPHA
from tests.tolerances import assert_outputs_close

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="the fused kernel could not be built here "
                                "(no C compiler, or MCDROP_KERNELS=0); the generic path is tested in test_engine.py")


def model(seed: int = 0, hidden=(48, 40), out: int = 5, dropout=(0.3, 0.5), input_dropout: float = 0.0,
          head: str = "classification", width: int = 30) -> DropoutMLP:
    torch.manual_seed(seed)
    m = DropoutMLP(width, list(hidden), out, dropout=list(dropout), input_dropout=input_dropout, head=head,
                   tau=2.0 if head == "homoscedastic" else None)
    with torch.no_grad():  # standardisation and heads that are not the identity
        m.input_shift.uniform_(-0.5, 0.5)
        m.input_scale.uniform_(0.5, 2.0)
        m.temperature.fill_(1.3)
        m.target_scale.fill_(3.0)
        m.target_shift.fill_(-1.0)
    return m


def both(m: nn.Module, x: torch.Tensor, n: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    fast, generic = MCEngine(m), MCEngine(m, fast=False)
    got = fast.sample(x, n, **kwargs)
    assert fast._fast_path() is not None and fast._fast_path().pairs > 0, "the fused path did not run"
    return got, generic.sample(x, n, **kwargs)


@pytest.mark.parametrize(("input_dropout", "dropout"), [
    (0.0, (0.3, 0.5)),     # no input dropout: z W^T shared by the samples; 16-bit and 1-bit lanes
    (0.1, (0.25, 0.75)),   # correction by the dropped inputs; 2-bit lanes
    (0.5, (0.1875, 0.3)),  # correction at its limit; 4-bit lanes
    (0.7, (0.5, 5 / 256)),  # sum over the kept inputs; 8-bit lanes
])
def test_equals_generic_path_for_every_input_form(input_dropout, dropout):
    m = model(input_dropout=input_dropout, dropout=dropout)
    got, want = both(m, torch.randn(7, 30), 33, seed=4)
    assert_outputs_close(got, want)


@pytest.mark.parametrize("head", ["classification", "homoscedastic", "heteroscedastic"])
def test_equals_generic_path_for_every_head(head):
    m = model(head=head, out=1 if head != "classification" else 5, input_dropout=0.2)
    got, want = both(m, torch.randn(6, 30), 21, seed=9)
    assert_outputs_close(got, want)


@pytest.mark.parametrize("hidden", [(1,), (17,), (300, 257, 31)])  # widths around and beyond a column tile
def test_equals_generic_path_for_any_widths_and_depths(hidden):
    m = model(hidden=hidden, dropout=[0.2] * len(hidden), input_dropout=0.1, width=45)
    got, want = both(m, torch.randn(5, 45), 19, seed=1)
    assert_outputs_close(got, want)


def test_row_seeds_positions_and_first_sample_follow_the_keys():
    m = model(input_dropout=0.1)
    x = torch.randn(4, 30)
    kwargs = dict(seed=torch.tensor([5, 5, 9, 2**40]), rows=torch.tensor([0, 7, 3, 2**31 - 1]), first_sample=2**32 - 30)
    got, want = both(m, x, 30, **kwargs)
    assert_outputs_close(got, want)


def test_bit_identical_on_repeat_and_independent_of_the_batch_around_a_row():
    m = model(input_dropout=0.1)
    engine = MCEngine(m)
    x = torch.randn(9, 30)
    a = engine.sample(x, 40, seed=3)
    assert torch.equal(a, engine.sample(x, 40, seed=3))
    alone = engine.sample(x[4:5], 40, seed=3, rows=torch.tensor([4]))
    assert_outputs_close(a[:, 4:5], alone)


@pytest.mark.parametrize("budget", [1, 48 * 5, 10**9])
def test_chunking_and_thread_counts_do_not_change_answers(budget):
    m = model(input_dropout=0.1)
    x = torch.randn(11, 30)
    reference = MCEngine(m).sample(x, 37, seed=6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = MCEngine(m, element_budget=budget).sample(x, 37, seed=6)
    finally:
        torch.set_num_threads(before)
    assert_outputs_close(one, reference)


@pytest.mark.parametrize("input_dropout", [0.2, 0.7])
def test_same_distribution_as_a_training_mode_loop(input_dropout):
    """Per output, the fused path's samples and a loop of train-mode passes with torch's own masks pass a KS test."""
    m = model(3, input_dropout=input_dropout)
    x = torch.randn(1, 30)
    n = 3000
    fused = MCEngine(m).sample(x, n, seed=1)[:, 0, :]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        h = F.dropout(((x - m.input_shift) / m.input_scale).expand(n, -1), input_dropout, generator=gen)
        h = F.dropout(torch.relu(m.net[1](h)), 0.3, generator=gen)
        h = F.dropout(torch.relu(m.net[4](h)), 0.5, generator=gen)
        loop = m.net[7](h) / m.temperature
    for c in range(loop.shape[1]):
        assert stats.ks_2samp(fused[:, c].numpy(), loop[:, c].numpy()).pvalue > ALPHA / loop.shape[1]


def test_follows_weights_and_rates_changed_after_the_first_call():
    m = model(input_dropout=0.1)
    engine, generic = MCEngine(m), MCEngine(m, fast=False)
    x = torch.randn(3, 30)
    engine.sample(x, 5, seed=1)
    with torch.no_grad():
        m.net[1].weight.mul_(-1.5)
    m.net[3].p = 0.6
    assert_outputs_close(engine.sample(x, 25, seed=2), generic.sample(x, 25, seed=2))
    m.net[3].p = 0.0  # a rate the kernel does not take: the generic path answers
    assert_outputs_close(engine.sample(x, 25, seed=2), generic.sample(x, 25, seed=2))


def test_dense_hidden_layers_hand_back_to_the_generic_path(caplog):
    """Without input dropout, hidden layers that keep more than SPARSE_MAX_DENSITY of their inputs (all ReLUs
    positive, p = 0.1) are faster on the generic path: after DENSITY_PAIRS passes the engine takes it, with one
    log line.  With input dropout the fused path stays (the generic one cannot share the first layer then)."""
    with_input = model(dropout=(0.1, 0.1), input_dropout=0.1)
    m = model(dropout=(0.1, 0.1))
    with torch.no_grad():
        for layer in (m.net[0], m.net[3], with_input.net[1], with_input.net[4]):
            layer.bias.fill_(50.0)
    kept = MCEngine(with_input)
    kept.sample(torch.randn(8, 30), mlp_plan.DENSITY_PAIRS // 8, seed=1)
    assert not kept._fast_path().disabled and kept._fast_path().densities()[1] > mlp_plan.SPARSE_MAX_DENSITY
    engine, generic = MCEngine(m), MCEngine(m, fast=False)
    x = torch.randn(8, 30)
    with caplog.at_level(logging.INFO, logger="mcdrop.nets.mlp_plan"):
        first = engine.sample(x, mlp_plan.DENSITY_PAIRS // 8, seed=1)
    assert engine._fast_path().disabled
    assert engine._fast_path().densities()[1] > mlp_plan.SPARSE_MAX_DENSITY
    assert sum("generic path" in r.message for r in caplog.records) == 1
    assert_outputs_close(first, generic.sample(x, mlp_plan.DENSITY_PAIRS // 8, seed=1))
    assert torch.equal(engine.sample(x, 10, seed=2), generic.sample(x, 10, seed=2))


def test_sparse_models_keep_the_fused_path():
    m = model(input_dropout=0.1)
    engine = MCEngine(m)
    engine.sample(torch.randn(8, 30), mlp_plan.DENSITY_PAIRS // 8, seed=1)
    assert not engine._fast_path().disabled
    densities = engine._fast_path().densities()
    assert 0.05 < densities[0] < 0.15  # dropped inputs: about p
    assert all(0.0 < d < mlp_plan.SPARSE_MAX_DENSITY for d in densities[1:])


def test_other_models_and_dtypes_use_the_generic_path():
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model()

        def forward(self, x):
            return self.inner(x)

    assert MCEngine(Wrapped()).sample(torch.randn(2, 30), 3, seed=0).shape == (3, 2, 5)
    assert mlp_plan.MLPPlan.for_model(Wrapped(), kernels.load()) is None
    assert mlp_plan.MLPPlan.for_model(model().double(), kernels.load()) is None
    assert mlp_plan.MLPPlan.for_model(model(), None) is None
    m = model()
    x64 = torch.randn(2, 30, dtype=torch.float64)
    engine = MCEngine(m.double())
    assert engine.sample(x64, 3, seed=0).dtype == torch.float64


def test_kernels_off_by_environment(monkeypatch):
    monkeypatch.setenv("MCDROP_KERNELS", "0")
    assert kernels.load() is None
    m = model(input_dropout=0.1)
    engine = MCEngine(m)
    x = torch.randn(3, 30)
    out = engine.sample(x, 9, seed=4)
    assert engine._fast_path() is None
    monkeypatch.delenv("MCDROP_KERNELS")
    assert_outputs_close(out, MCEngine(m).sample(x, 9, seed=4))


@pytest.mark.parametrize("compiler", ["/nonexistent/cc", "false"])
def test_no_compiler_means_the_generic_path_and_one_log_line(monkeypatch, tmp_path, caplog, compiler):
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", compiler)
    monkeypatch.setattr(kernels, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="mcdrop.sampling.kernels"):
        assert kernels.load() is None
        assert kernels.load() is None
        engine = MCEngine(model())
        assert engine.sample(torch.randn(2, 30), 3, seed=0).shape == (3, 2, 5)
    assert engine._fast_path() is None
    warnings = [r.message for r in caplog.records if "fused MC kernel unavailable" in r.message]
    assert len(warnings) == 1


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 vector-width variants")
@pytest.mark.parametrize("flags", ["-mno-avx512f", "-mno-avx"])  # the AVX2 build (8-wide) and the SSE one (4-wide)
def test_narrower_vector_builds_give_the_same_answers(monkeypatch, tmp_path, flags):
    """Machines without AVX-512 run other code (8- or 4-wide vectors, the scalar list loop): built here with the
    wider units switched off, on the shapes that exercise every tile and tail."""
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path))
    monkeypatch.setenv("MCDROP_KERNEL_CFLAGS", flags)
    monkeypatch.setattr(kernels, "_loaded", {})
    assert kernels.load() is not None
    for m, width in ((model(input_dropout=0.1, dropout=(0.3, 5 / 256)), 30),
                     (model(hidden=(300, 17), dropout=(0.5, 0.25), input_dropout=0.7, width=45), 45)):
        got, want = both(m, torch.randn(6, width), 23, seed=2)
        assert_outputs_close(got, want)


def test_build_is_cached_per_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_loaded", {})
    assert kernels.load() is not None
    built = list((tmp_path / "kernels").glob("mcdrop-*.so"))
    assert len(built) == 1
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("CC", "false")  # a second process finds the library: no compiler needed
    assert kernels.load() is not None
    assert list((tmp_path / "kernels").iterdir()) == built


@pytest.mark.parametrize("flags", ["", "-mno-avx512f", "-mno-avx"])  # the AVX-512 list loop, then the scalar one
@pytest.mark.parametrize(("input_dropout", "dropout"), [(0.0, (0.3, 0.5)), (0.1, (0.25, 0.75)), (0.7, (0.5, 5 / 256))])
def test_an_overflowing_row_gives_non_finite_outputs_like_the_generic_path(monkeypatch, tmp_path, flags, input_dropout,
                                                                           dropout):
    """A row of 3e38 overflows to inf and NaN in the first layer: the generic path's relu(NaN) = NaN and NaN * 0 =
    NaN carry it to every sample's output, and the fused path must not drop those units as if they were zero (it
    gave finite logits, so MC mode answered where deterministic mode refuses)."""
    if flags and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 vector-width variants")
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path))
    monkeypatch.setenv("MCDROP_KERNEL_CFLAGS", flags)
    monkeypatch.setattr(kernels, "_loaded", {})
    m = model(input_dropout=input_dropout, dropout=dropout, hidden=(64, 48))
    x = torch.randn(4, 30)
    x[1] = 3e38
    x[3, :5] = -3e38
    got, want = both(m, x, 17, seed=3)
    assert not torch.isfinite(want[:, [1, 3]]).all(-1).any(), "the generic path's overflowing rows are not all non-finite"
    assert not torch.isfinite(got[:, [1, 3]]).all(-1).any()
    assert_outputs_close(got[:, [0, 2]], want[:, [0, 2]])


def test_a_build_without_openmp_splits_over_a_thread_pool_with_the_same_bits(monkeypatch, tmp_path, caplog):
    """A compiler without working -fopenmp (here: -fno-openmp) gives a kernel that runs one thread by itself; the
    plan then runs mlp_sample_part on a thread pool: the same pair ranges as the OpenMP build, the same bits."""
    m = model(input_dropout=0.1, dropout=(0.3, 5 / 256))
    x = torch.randn(40, 30)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with_openmp = MCEngine(m)
        want = with_openmp.sample(x, 16, seed=2)  # 640 pairs: two parts
        monkeypatch.setenv("MCDROP_CACHE", str(tmp_path))
        monkeypatch.setenv("MCDROP_KERNEL_CFLAGS", "-fno-openmp")
        monkeypatch.setattr(kernels, "_loaded", {})
        with caplog.at_level(logging.WARNING, logger="mcdrop.sampling.kernels"):
            built = kernels.load()
        assert built is not None and not built.openmp and built.threads(640) == 2
        assert "thread pool" in kernels.describe()
        assert len([r for r in caplog.records if "without OpenMP" in r.message]) == 1
        part, parts = built.mlp_sample_part, []
        monkeypatch.setattr(built, "mlp_sample_part", lambda *a: parts.append(a[:2]) or part(*a))
        pooled = MCEngine(m)
        got = pooled.sample(x, 16, seed=2)
    finally:
        torch.set_num_threads(threads)
    assert sorted(parts) == [(0, 2), (1, 2)] and pooled._fast_path() is not None
    assert torch.equal(got, want)
    assert pooled._fast_path().nnz == with_openmp._fast_path().nnz  # the parts' counts are summed
