"""The package as users get it: exports, the package list, a wheel installed outside the checkout, and the
client-only install without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest

import mcdrop
from tests.server import ROOT, free_port

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_export_resolves_and_all_is_sorted():
    assert mcdrop.__all__ == sorted(mcdrop.__all__)
    for name in mcdrop.__all__:
        assert getattr(mcdrop, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = mcdrop.nothing  # type: ignore[attr-defined]


def test_every_package_folder_is_in_the_wheel():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mcdrop").rglob("__init__.py")}
    assert found | {"mcdrop.bundled"} == listed


def test_extras_keep_the_base_install_torch_free():
    base = " ".join(PYPROJECT["project"]["dependencies"])
    assert not any(heavy in base for heavy in ("torch", "bentoml", "torchvision", "scipy"))
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["torch"]) and any("bentoml" in d for d in extras["serve"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("mcdrop-*.whl")
    return whl


def venv(path: Path, *, share_site_packages: bool) -> Path:
    """A fresh virtual environment; with ``share_site_packages``, this environment's packages (torch, BentoML)
    are appended to its path, so installing the wheel there takes seconds, not the 5 GB of torch again."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    if share_site_packages:
        site = next((path / "lib").glob("python3*/site-packages"))
        (site / "zz-shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin"


@pytest.mark.integration
@pytest.mark.slow
def test_wheel_outside_the_checkout_scores_serves_and_trains(wheel, tmp_path):
    import httpx

    from tests.cli.test_evaluate_bench_train import write_uci

    bin_ = venv(tmp_path / "venv", share_site_packages=True)
    proc = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("MCDROP_MODELS", "PYTHONPATH")}
    env["BENTOML_DO_NOT_TRACK"] = "True"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(bin_ / "python"), "-c", "import mcdrop, mcdrop.nets.artifacts as a; "
                            "import mcdrop.sampling.kernels as k; print(mcdrop.__file__); print(a.bundled_models_dir()); "
                            "print(k.load() is not None or k.shutil.which('cc') is None)"], cwd=work,
                           env={**env, "MCDROP_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(str(tmp_path / "venv") in w for w in where[:2]), where  # the wheel's package and its bundled models
    assert where[2] == "True", "the wheel's kernel source did not build"
    np.save(work / "x.npy", np.random.default_rng(0).uniform(size=(5, 784)).astype(np.float32))
    run = lambda *args: subprocess.run([str(bin_ / "mcdrop"), *map(str, args)], cwd=work, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    scored = run("score", "x.npy", "-o", "out.csv", "--seed", 1, "-n", 5)
    assert scored.returncode == 0 and len((work / "out.csv").read_text().splitlines()) == 6, scored.stderr
    trained = run("train", "uci", "yacht", "-o", "yacht", "--data-root", write_uci(tmp_path / "data"),
                  "--epochs-multiplier", 1, "--samples", 50, "--splits", 1)
    assert trained.returncode == 0 and (work / "yacht" / "card.json").is_file(), trained.stderr[-2000:]
    port = free_port()
    server = subprocess.Popen([str(bin_ / "mcdrop"), "serve", "--port", str(port)], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import time

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/models").json()["default"] == "fashion-mnist"
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


@pytest.mark.integration
@pytest.mark.slow
def test_client_only_install_has_no_torch(wheel, tmp_path):
    bin_ = venv(tmp_path / "venv", share_site_packages=False)
    proc = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", str(wheel)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0 and ("No matching distribution" in proc.stderr or "Could not find" in proc.stderr):
        pytest.skip(f"the package index cannot provide the client's dependencies here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    installed = subprocess.run([str(bin_ / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                               text=True, check=True).stdout.lower()
    for heavy in ("torch", "torchvision", "bentoml", "scipy"):
        assert f"\n{heavy}==" not in "\n" + installed, heavy
    code = ("import mcdrop, mcdrop.client, mcdrop.wire, mcdrop.cli.main, sys; "
            "print(sorted(m for m in ('torch', 'bentoml') if m in sys.modules))")
    out = subprocess.run([str(bin_ / "python"), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"
    helped = subprocess.run([str(bin_ / "mcdrop"), "score", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "--url" in helped.stdout
