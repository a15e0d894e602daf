"""The compiled training step (``stack.c``) against the torch step of ``_train_stack``: same batches, same masks,
the same weights after training up to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from mcdrop.training import stack_kernel, uci

kernel = stack_kernel.load()
needs_kernel = pytest.mark.skipif(kernel is None, reason="the compiled training step did not build (no C compiler)")


def two_sets(d: int, n: int = 540) -> tuple[torch.Tensor, torch.Tensor]:
    """Two standardised training sets ``(2, n, d)``, ``(2, n)``: a linear target and its noise; n not a multiple
    of 32, so the last batch is short."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(2, n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.3 * torch.randn(2, n, generator=g)
    return x, (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True)


@needs_kernel
@pytest.mark.parametrize(("heteroscedastic", "beta", "schedule"),
                         [(False, 0.0, "constant"), (True, 0.0, "constant"), (True, 0.5, "constant"), (True, 0.5, "cosine")])
@pytest.mark.parametrize(("d", "hidden"), [(7, 13), (3, 50)])
def test_compiled_step_trains_the_same_networks(heteroscedastic, beta, schedule, d, hidden):
    """Six networks on two data sets, rates 0 to 0.5, three epochs of 17 batches with an uneven last one: both
    paths end at the same weights to float32 rounding (Adam's steps divide by sqrt of the second moment, so
    gradients that differ in the last bits move the weights by about lr * 1e-6 a step at most)."""
    xs, ys = two_sets(d)
    owner = torch.tensor([0, 1, 0, 1, 0, 1])
    p = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.35, 0.5])
    decay = torch.tensor([1e-4, 1e-3, 1e-5, 1e-4, 1e-2, 1e-6])
    kwargs = dict(hidden=hidden, epochs=3, batch_size=32, lr=1e-2, heteroscedastic=heteroscedastic, beta=beta,
                  lr_schedule=schedule)
    assert xs.shape[1] % 32 != 0
    got = uci._train_stack(xs, ys, owner, p, decay, generator=torch.Generator().manual_seed(3), compiled=True,
                           **kwargs)
    want = uci._train_stack(xs, ys, owner, p, decay, generator=torch.Generator().manual_seed(3), compiled=False,
                            **kwargs)
    start = uci._train_stack(xs, ys, owner, p, decay, generator=torch.Generator().manual_seed(3), compiled=False,
                             **{**kwargs, "epochs": 0})
    for name, a, b, a0 in zip(("W1", "b1", "W2", "b2"), got, want, start, strict=True):
        assert (b - a0).abs().max() > 1e-2, f"{name} did not train"  # the comparison below is not vacuous
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


@needs_kernel
def test_compiled_step_uses_the_masks_it_is_given():
    """Another seed gives other masks and batches, so other weights: the kernel does not ignore its random words."""
    xs, ys = two_sets(5)
    owner, p, decay = torch.tensor([0, 1]), torch.tensor([0.3, 0.3]), torch.tensor([1e-4, 1e-4])
    kwargs = dict(hidden=16, epochs=1, batch_size=32, lr=1e-2, compiled=True)
    a = uci._train_stack(xs, ys, owner, p, decay, generator=torch.Generator().manual_seed(0), **kwargs)
    b = uci._train_stack(xs, ys, owner, p, decay, generator=torch.Generator().manual_seed(1), **kwargs)
    assert (a[0] - b[0]).abs().max() > 1e-2


def test_kernels_switch_turns_the_compiled_step_off(monkeypatch):
    monkeypatch.setenv("MCDROP_KERNELS", "0")
    assert stack_kernel.load() is None


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=needs_kernel), False])
def test_cosine_schedule_shrinks_the_last_steps(compiled):
    """lr (1 + cos(pi e / E)) / 2: over E = 10 epochs the last epoch's rate is 0.025 of the second's. Adam's steps
    scale with the rate, so the weights move about 40x less in the last epoch than in the second; with the
    constant rate a third as much (the check that the drop is the schedule's, not convergence's)."""
    xs, ys = two_sets(5)
    owner, p, decay = torch.tensor([0, 1]), torch.tensor([0.1, 0.1]), torch.tensor([1e-4, 1e-4])

    def moves(schedule: str) -> float:
        snaps: list[torch.Tensor] = []
        uci._train_stack(xs, ys, owner, p, decay, hidden=20, epochs=10, batch_size=32, lr=1e-2,
                         generator=torch.Generator().manual_seed(0), heteroscedastic=True, beta=0.5,
                         lr_schedule=schedule, compiled=compiled,
                         on_epoch=lambda e, params: snaps.append(params[0].detach().clone()))
        assert len(snaps) == 10
        return float((snaps[9] - snaps[8]).norm() / (snaps[1] - snaps[0]).norm())

    cosine, constant = moves("cosine"), moves("constant")
    assert cosine < 0.05  # measured 0.010-0.012 over three seeds
    assert constant > 0.15  # measured 0.29-0.40
