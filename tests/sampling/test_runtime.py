"""Device selection (the CPU-side logic of the CUDA path) and, where a GPU exists, CUDA answers against the CPU's."""

from __future__ import annotations

import pytest
import torch

from mcdrop import MCEngine
from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling import functional as F
from mcdrop.sampling import rng, runtime
from mcdrop.sampling.precision import apply_precision
from mcdrop.sampling.runtime import CPU_ELEMENT_BUDGET, MAX_ELEMENT_BUDGET, element_budget_for, resolve_device, tune_allocator
from tests.tolerances import assert_outputs_close


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in (None, "cpu", " CPU ", "auto"):
        assert resolve_device(spec) == torch.device("cpu")


def test_auto_and_cuda_with_gpus(monkeypatch):
    """Mocked: no GPU here.  auto picks CUDA when there is one; an index must exist; the precision flags are left
    alone (they are set explicitly, mcdrop.sampling.precision)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    def flags() -> tuple[object, ...]:
        return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32)

    before = flags()
    try:  # from the state resolve_device used to change: TF32 on
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        assert resolve_device("auto") == torch.device("cuda")
        assert flags() == ("high", True, True)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1], before[2]
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(("spec", "message"), [
    ("gpu", "device has to be one of cpu, cuda, cuda:N or auto"),
    ("cuda:one", "device has to be one of"),
    ("cuda", "no CUDA device is available here"),
])
def test_bad_or_missing_devices_are_named(monkeypatch, spec, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        resolve_device(spec)


def test_element_budget_is_sized_for_the_device():
    cpu = torch.device("cpu")
    assert element_budget_for(cpu) == element_budget_for(cpu, 1 << 40) == CPU_ELEMENT_BUDGET
    gpu = torch.device("cuda")
    assert element_budget_for(gpu, 141 << 30) == MAX_ELEMENT_BUDGET  # an H200: capped
    assert element_budget_for(gpu, 8 << 30) == 1 << 25  # 8 GiB / 64 shares / 4 bytes
    assert element_budget_for(gpu, 12 << 30) == 1 << 25  # a power of two within the share
    assert element_budget_for(gpu, 1 << 30) == CPU_ELEMENT_BUDGET  # never below the CPU's


def test_engine_takes_the_devices_budget_unless_given_one(monkeypatch):
    """The chunks (one ``cancelled`` check each) follow element_budget_for(x.device) when no budget is given."""
    model = load_artifact("fashion-mnist").model  # widest activation: 1024 numbers per (sample, row)
    x = torch.rand(3, 784)
    asked: list[torch.device] = []

    def budget(device: torch.device, memory_bytes: int | None = None) -> int:
        asked.append(device)
        return 1024 * 10

    def chunks(engine: MCEngine) -> int:
        checks: list[int] = []
        engine.sample(x, 100, seed=1, cancelled=lambda: checks.append(1) is not None)
        return len(checks)

    monkeypatch.setattr(runtime, "element_budget_for", budget)
    assert chunks(MCEngine(model, fast=False)) == 3 * 10 and asked == [x.device]  # 10 passes of one row a chunk
    assert chunks(MCEngine(model, fast=False, element_budget=1024 * 300)) == 1


def test_tune_allocator_is_harmless():
    assert tune_allocator() in (True, False)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_keyed_masks_are_the_same_bits_on_cuda():
    keys = rng.stream_keys(rng.seed_key(7), (0, 0), torch.arange(64), torch.arange(100))
    for p in (0.5, 0.25, 0.1, 0.3, 5 / 256):
        cpu = F.keep_mask(keys, 1024, p)
        assert torch.equal(F.keep_mask(keys.cuda(), 1024, p).cpu(), cpu)


@cuda
def test_cuda_engine_agrees_with_the_cpu_within_float32_rounding():
    model = load_artifact("fashion-mnist").model
    x = torch.rand(64, 784)
    want = MCEngine(model).sample(x, 30, seed=3)
    apply_precision(model, "float32", torch.device("cuda"))  # TF32 off
    got = MCEngine(model.cuda()).sample(x.cuda(), 30, seed=3).cpu()
    assert_outputs_close(got, want)
