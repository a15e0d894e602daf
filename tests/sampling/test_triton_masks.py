"""The fused Triton masks (mcdrop.sampling.triton_masks): the same bits as the torch path.

Without a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, read when the kernel is
compiled, so in a subprocess); with one, on the GPU itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mcdrop.sampling import triton_masks

pytest.importorskip("triton")

# Every lane width (1, 2, 4, 8, 16 bits), word boundaries (n = 1, 7, 64, 1030), both input layouts, float32 and
# bfloat16, channel dropout, and whole engine passes (MLP, CNN) with the kernel on and off: bit-identical.
_CHECK = textwrap.dedent("""
    import os
    import torch
    from mcdrop.sampling import functional as F, rng, triton_masks as T
    from mcdrop.sampling.engine import MCEngine
    from mcdrop.nets.models import DropoutCNN, DropoutMLP

    assert T.enabled(torch.device(DEVICE))
    keys = rng.stream_keys(rng.seed_key(7), (1, 0), torch.arange(3, device=DEVICE), torch.arange(4, device=DEVICE))

    def torch_path(fn, *args, **kwargs):
        os.environ["MCDROP_TRITON"] = "0"
        try:
            return fn(*args, **kwargs)
        finally:
            os.environ["MCDROP_TRITON"] = "1"

    for p in (0.5, 0.25, 0.0625, 0.75, 0.1, 0.3):
        for n in (1, 7, 64, 1030):
            want = torch_path(F.keep_mask, keys, n, p)
            assert torch.equal(F.keep_mask(keys, n, p), want), (p, n)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 6, device=DEVICE).to(dtype)
        for xx in (x, x.repeat(4, 1, 1)):
            for p in (0.5, 0.1, 0.3):
                got, want = F.mc_dropout(xx, keys, p), torch_path(F.mc_dropout, xx, keys, p)
                assert got.dtype == want.dtype and torch.equal(got, want), (dtype, xx.shape, p)
                got, want = F.mc_channel_dropout(xx, keys, p), torch_path(F.mc_channel_dropout, xx, keys, p)
                assert torch.equal(got, want), ("channel", dtype, xx.shape, p)

    torch.manual_seed(0)
    models = [(DropoutMLP(12, [16, 16], 3, dropout=0.3, input_dropout=0.2), torch.randn(5, 12)),
              (DropoutCNN((8, 8), 3, channels=(4, 4), hidden=(8,), channel_dropout=0.25, dropout=0.5),
               torch.randn(5, 64))]
    for model, x in models:
        model = model.to(DEVICE)
        x = x.to(DEVICE)
        want = torch_path(MCEngine(model, fast=False).sample, x, 6, seed=3)
        assert torch.equal(MCEngine(model, fast=False).sample(x, 6, seed=3), want), type(model).__name__
    print("bit-identical")
""")


def _run(device: str, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", f"DEVICE = {device!r}\n" + _CHECK], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MCDROP_TRITON": "1", **env})
    assert proc.returncode == 0 and "bit-identical" in proc.stdout, proc.stderr[-3000:]


def test_interpreted_kernel_gives_the_torch_paths_bits():
    _run("cpu", {"TRITON_INTERPRET": "1"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_gives_the_torch_paths_bits():
    _run("cuda", {"TRITON_INTERPRET": "0"})


def test_enabled_only_on_cuda_or_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("MCDROP_TRITON", "1")
    assert not triton_masks.enabled(torch.device("cpu"))  # no CPU backend: the torch path
    monkeypatch.setenv("MCDROP_TRITON", "0")
    assert not triton_masks.enabled(torch.device("cuda"))
    monkeypatch.setenv("MCDROP_TRITON", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not triton_masks.enabled(torch.device("cpu"))  # the interpreter only when asked for
    assert triton_masks.enabled(torch.device("cuda")) == triton_masks.available()
