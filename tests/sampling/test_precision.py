"""Precision as a setting: which device takes which, and bfloat16's agreement with float32 within the bound
stated from its unit roundoff (mcdrop.sampling.precision; README "Reproducibility")."""

from __future__ import annotations

import pytest
import torch

from mcdrop import MCEngine
from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.precision import (
    UNIT_ROUNDOFF,
    apply_precision,
    check_precision,
    output_tolerance,
    probability_tolerance,
)
from tests.conftest import needs_data

CPU = torch.device("cpu")


def test_float32_is_the_default_and_names_are_checked():
    assert check_precision(None, CPU) == "float32"
    assert check_precision(" BFloat16 ", CPU) == "bfloat16"
    with pytest.raises(ValueError, match="precision has to be one of float32, tf32, bfloat16, but got 'fp8'"):
        check_precision("fp8", CPU)


def test_tf32_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match=r"precision 'tf32' needs a CUDA device .* on cpu use float32 or bfloat16"):
        check_precision("tf32", CPU)


def test_unit_roundoffs_are_those_of_the_formats():
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        assert UNIT_ROUNDOFF[name] == torch.finfo(dtype).eps / 2


def _images(n: int) -> torch.Tensor:
    from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist

    images, _ = load_fashion_mnist(train=False)
    return fashion_mnist_features(images[:n])


@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
def test_bfloat16_agrees_with_float32_within_the_stated_bound():
    """The shipped classifier on real test images and on uniform noise: every pass's logits within
    ``(3 L + 4) u`` of the row's largest logit, mean probabilities within half the logit bound."""
    reference = load_artifact("fashion-mnist").model
    half = apply_precision(load_artifact("fashion-mnist").model, "bfloat16", CPU)
    layers = sum(isinstance(m, torch.nn.Linear) for m in reference.modules())
    engine = MCEngine(half)
    assert engine._fast_path() is None  # the fused kernel is float32-only: bfloat16 takes the generic path
    x = torch.cat([_images(48), torch.rand(16, 784, generator=torch.Generator().manual_seed(0))])
    want = MCEngine(reference).sample(x, 20, seed=4)
    got = engine.sample(x, 20, seed=4)
    assert got.dtype == torch.float32
    largest = want.abs().amax(-1)
    assert ((got - want).abs().amax(-1) <= output_tolerance("bfloat16", layers) * largest).all()
    p_want, p_got = torch.softmax(want, -1).mean(0), torch.softmax(got, -1).mean(0)
    bound = probability_tolerance("bfloat16", layers, 1.0) * largest.amax(0)
    assert ((p_got - p_want).abs().amax(-1) <= bound).all()
    assert not torch.equal(got, want)  # it did run in bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["float32", "tf32", "bfloat16"])
def test_cuda_precisions_agree_with_the_cpu(precision):
    device = torch.device("cuda")
    if precision != "float32":
        try:
            check_precision(precision, device)
        except ValueError as err:
            pytest.skip(str(err))
    reference = load_artifact("fashion-mnist").model
    layers = sum(isinstance(m, torch.nn.Linear) for m in reference.modules())
    model = apply_precision(load_artifact("fashion-mnist").model.to(device), precision, device)
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    want = MCEngine(reference).sample(x, 30, seed=3)
    try:
        got = MCEngine(model).sample(x.to(device), 30, seed=3).cpu()
    finally:
        apply_precision(reference, "float32", device)  # the TF32 flags are process-wide
    bound = 1e-5 if precision == "float32" else output_tolerance(precision, layers)
    assert ((got - want).abs().amax(-1) <= bound * want.abs().amax(-1).clamp_min(0.1)).all()
