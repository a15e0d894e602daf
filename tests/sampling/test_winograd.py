"""The fused 3x3 convolution, 2x2 max pooling and ReLU (mcdrop/sampling/winograd.py, winograd.c): torch's answer
within float32 rounding for every shape, option and vector width, NaN reaching the windows torch's reaches and an
overflowing image non-finite as in torch, and the same bits with or without OpenMP."""

from __future__ import annotations

import platform

import pytest
import torch
from torch.nn import functional as tF

from mcdrop.sampling import kernels, winograd
from tests.tolerances import assert_outputs_close


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, input_bias: torch.Tensor | None = None,
              relu_input: bool = False, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The same layers in torch, in float64."""
    h = x.double() if input_bias is None else x.double() + input_bias.double().view(1, -1, 1, 1)
    h = h.relu() if relu_input else h
    y = tF.max_pool2d(tF.conv2d(h, w.double(), b.double(), padding=1).relu(), 2)
    return y if scale is None else y * scale.double()[:, :, None, None]


def case(n: int, c: int, o: int, hw: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *hw, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(o, c, 3, 3, generator=g) / (3 * c ** 0.5)
    return x, w, torch.randn(o, generator=g) * 0.3, torch.randn(c, generator=g) * 0.5


def run(kernel: winograd.Winograd, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, **options) -> torch.Tensor:
    return kernel.conv3x3_pool(x, winograd.pack_weights(w, b, kernel.nr), **options)


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within the README's tolerance of each image's largest output."""
    assert got.shape == want.shape
    assert_outputs_close(got.reshape(got.shape[0], -1), want.reshape(want.shape[0], -1))


@pytest.fixture
def kernel() -> winograd.Winograd:
    built = winograd.load()
    if built is None:
        pytest.skip("no C compiler here: the fused convolution is not built (the CNN plan uses torch's)")
    return built


@pytest.mark.parametrize(("n", "c", "o", "hw"), [
    (5, 64, 64, (14, 14)),   # the shipped CNN's block 2
    (3, 32, 32, (28, 28)),   # its block 1
    (4, 5, 7, (7, 9)),       # odd sizes (the pooling floors), channels not a multiple of any vector width
    (2, 19, 33, (2, 3)),     # one tile row; outputs past one block of NR
    (1, 1, 1, (2, 2)),       # one tile, one channel
    (37, 3, 4, (4, 6)),      # more images than threads: the image ranges split
])
@pytest.mark.parametrize("options", [{}, {"relu_input": True}, {"input_bias": True, "relu_input": True, "scale": True},
                                     {"input_bias": True}, {"scale": True}])
def test_equals_torch(kernel, n, c, o, hw, options, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two image ranges (37 images) wherever this runs
    x, w, b, ib = case(n, c, o, hw)
    scale = (torch.rand(n, o) > 0.3).float() * 1.25
    kwargs = {"relu_input": options.get("relu_input", False), "input_bias": ib if options.get("input_bias") else None,
              "scale": scale if options.get("scale") else None}
    got = run(kernel, x, w, b, **kwargs)
    assert got.is_contiguous(memory_format=torch.channels_last)
    close(got, reference(x, w, b, **kwargs))


def test_wrong_inputs_are_refused_before_the_c_code_reads_them(kernel):
    x, w, b, _ = case(2, 4, 3, (4, 4))
    packed = winograd.pack_weights(w, b, kernel.nr)
    for bad, options in ((x.double(), {}), (x[:, :3], {}), (x[:, :, :1], {}), (x, {"scale": torch.ones(2, 4)}),
                         (x, {"input_bias": torch.ones(3)})):
        with pytest.raises(ValueError):
            kernel.conv3x3_pool(bad, packed, **options)


def test_reads_inputs_in_any_memory_layout(kernel):
    x, w, b, _ = case(3, 6, 5, (8, 6))
    close(run(kernel, x.contiguous(), w, b), reference(x, w, b))


def test_padding_stays_zero_with_an_input_bias(kernel):
    """The padding is not biased: conv(pad(x) + ib) would differ from conv(pad(x + ib)) on the border tiles."""
    x, w, b, _ = case(2, 4, 3, (4, 4))
    ib = torch.full((4,), 5.0)
    close(run(kernel, x, w, b, input_bias=ib), reference(x, w, b, input_bias=ib))


def test_non_finite_inputs_give_non_finite_pools_as_torch_does(kernel):
    """A NaN pixel reaches exactly the pooling windows whose 4x4 patch holds it (NaN through ReLU and max, as in
    torch); an overflowing image is non-finite in both."""
    x, w, b, _ = case(3, 4, 5, (6, 6))
    x[0, 1, 2, 3] = float("nan")
    x[2] = 3e38
    for relu_input in (False, True):
        got = run(kernel, x, w, b, relu_input=relu_input)
        want = reference(x, w, b, relu_input=relu_input)
        assert torch.equal(got[0].isnan(), want[0].isnan()) and got[0].isnan().any()
        close(got[1:2], want[1:2])
        in_float32 = tF.max_pool2d(tF.conv2d(x[2:].relu() if relu_input else x[2:], w, b, padding=1).relu(), 2)
        assert not torch.isfinite(in_float32).all() and not torch.isfinite(got[2]).all()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 vector-width variants")
@pytest.mark.parametrize("flags", ["-mno-avx512f", "-mno-avx"])  # the AVX2 build (8-wide) and the SSE one (4-wide)
def test_narrower_vector_builds_give_the_same_answers(monkeypatch, tmp_path, flags):
    native = winograd.load()
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path))
    monkeypatch.setenv("MCDROP_KERNEL_CFLAGS", flags)
    monkeypatch.setattr(kernels, "_loaded", {})
    built = winograd.load()
    assert native is not None and built is not None
    if flags == "-mno-avx":
        assert built.nr == 8  # 4-wide SSE
    elif built.nr == native.nr:
        pytest.skip("this CPU has no AVX-512: -mno-avx512f builds the native kernel")
    for n, c, o, hw in ((4, 5, 7, (7, 9)), (3, 64, 40, (14, 14))):
        x, w, b, ib = case(n, c, o, hw)
        scale = torch.rand(n, o)
        close(run(built, x, w, b, input_bias=ib, relu_input=True, scale=scale),
              reference(x, w, b, input_bias=ib, relu_input=True, scale=scale))


def test_a_build_without_openmp_splits_over_a_thread_pool_with_the_same_bits(monkeypatch, tmp_path, kernel):
    x, w, b, ib = case(40, 8, 9, (6, 8))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = run(kernel, x, w, b, input_bias=ib, relu_input=True)
        monkeypatch.setenv("MCDROP_CACHE", str(tmp_path))
        monkeypatch.setenv("MCDROP_KERNEL_CFLAGS", "-fno-openmp")
        monkeypatch.setattr(kernels, "_loaded", {})
        built = winograd.load()
        assert built is not None and not built.openmp
        part, parts = built._part, []
        monkeypatch.setattr(built, "_part", lambda *a: parts.append(a[:2]) or part(*a))
        got = run(built, x, w, b, input_bias=ib, relu_input=True)
    finally:
        torch.set_num_threads(threads)
    assert sorted(parts) == [(0, 2), (1, 2)]
    assert torch.equal(got, want)


def test_the_transformed_weights_are_g_w_g_transposed_per_channel_pair():
    """``pack_weights`` against the 3x3 -> 4x4 transform written out for one (output, input) pair, and the zero
    padding of the last block of outputs."""
    w, b = torch.randn(3, 2, 3, 3, dtype=torch.float64).float(), torch.randn(3)
    packed = winograd.pack_weights(w, b, nr=4)
    assert packed.u.shape == (1, 16, 2, 4) and packed.bias.shape == (4,) and packed.out_channels == 3
    g = w[1, 0].double()
    # rows of G g: g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2; then the same along columns
    rows = torch.stack([g[0], (g[0] + g[1] + g[2]) / 2, (g[0] - g[1] + g[2]) / 2, g[2]])
    full = torch.stack([rows[:, 0], (rows[:, 0] + rows[:, 1] + rows[:, 2]) / 2,
                        (rows[:, 0] - rows[:, 1] + rows[:, 2]) / 2, rows[:, 2]], dim=1)
    torch.testing.assert_close(packed.u[0, :, 0, 1].double(), full.reshape(16), rtol=0, atol=1e-6)
    assert torch.equal(packed.u[0, :, :, 3], torch.zeros(16, 2)) and packed.bias[3] == 0
