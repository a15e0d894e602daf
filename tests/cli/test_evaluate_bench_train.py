"""`mcdrop evaluate`, `mcdrop bench uci` and `mcdrop train` as subprocesses, on generated and real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mcdrop.nets.artifacts import bundled_models_dir
from tests.cli.test_score import mcdrop
from tests.conftest import ALPHA, SHARED_DATA, needs_data
from tests.tolerances import assert_metrics_within, classification_metric_bounds, regression_metric_bounds
from tests.training.test_data import write_idx

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_uci(root: Path, name: str = "yacht", n: int = 300, splits: int = 3) -> Path:
    """A UCI-format dataset with a smooth target, in ``root/uci/name``."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(n, 3))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] - x[:, 2] ** 2 + 0.1 * rng.normal(size=n)
    folder = root / "uci" / name
    folder.mkdir(parents=True)
    np.savetxt(folder / "data.txt", np.column_stack([x, y]))
    files = {"index_features.txt": "0\n1\n2", "index_target.txt": "3", "n_splits.txt": str(splits),
             "n_hidden.txt": "50", "n_epochs.txt": "40", "dropout_rates.txt": "0.005\n0.05",
             "tau_values.txt": "10\n100"}
    for k in range(splits):
        perm = rng.permutation(n)
        files[f"index_train_{k}.txt"] = "\n".join(map(str, perm[: int(0.9 * n)]))
        files[f"index_test_{k}.txt"] = "\n".join(map(str, perm[int(0.9 * n) :]))
    for file, text in files.items():
        (folder / file).write_text(text + "\n")
    return root


def test_bench_uci_quick_on_generated_data(tmp_path):
    root = write_uci(tmp_path / "data")
    out = tmp_path / "uci.md"
    proc = mcdrop("bench", "uci", "--quick", "--data-root", root, "-o", out)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| yacht"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["yacht", "300", "3", "2", "120", "500"]  # --quick: 2 splits, x3 epochs, T = 500
    assert "x3" in out.read_text() and row in out.read_text()
    per_split = json.loads(out.with_suffix(".json").read_text())
    assert len(per_split[0]["splits"]) == 2 and per_split[0]["config"]["samples"] == 500


def test_bench_uci_errors(tmp_path, cli):
    run = cli("bench", "uci", "--datasets", "iris", "-o", tmp_path / "x.md")
    assert run.returncode == 2 and "unknown dataset 'iris'" in run.stderr
    run = cli("bench", "uci", "--quick", "--data-root", tmp_path / "nowhere", "-o", tmp_path / "x.md")
    assert run.returncode == 1 and "not found" in run.stderr and "Traceback" not in run.stderr


def test_train_uci_then_evaluate_reproduces_the_card(tmp_path):
    root = write_uci(tmp_path / "data")
    model = tmp_path / "yacht-model"
    mcdrop("train", "uci", "yacht", "-o", model, "--data-root", root, "--epochs-multiplier", "2", "--samples", "300")
    card = json.loads((model / "card.json").read_text())
    assert card["task"] == "homoscedastic" and card["dataset"] == "yacht" and card["tau"] in (10.0, 100.0)
    assert card["architecture"]["input_dropout"] == card["training"]["dropout"]
    assert card["training"]["holdout"] == {"fraction": 0.3, "seed": 0} and card["calibration_file"]
    mcdrop("evaluate", model, "--data-root", root, "--samples", "300", "--json", tmp_path / "ev.json")
    metrics = json.loads((tmp_path / "ev.json").read_text())
    stored = card["metrics"]["heldout_test_mc_300"]
    from mcdrop.nets.artifacts import load_model
    from mcdrop.sampling.engine import MCEngine
    from mcdrop.training.data import load_uci
    from mcdrop.training.uci import holdout_split
    from mcdrop.uncertainty.prediction import predict

    data, engine = load_uci("yacht", root), MCEngine(load_model(model)[0])
    train, cal, test = holdout_split(len(data.y), 0.3, 0)
    assert len(train) == 210 and len(cal) == 45 and len(test) == 45 and not set(train) & set(test)
    result = predict(engine, torch.tensor(data.x[test], dtype=torch.float32), n_samples=300, seed=0,
                     return_samples=True)
    s = result.summary
    bounds = regression_metric_bounds(result.samples, data.y[test], card["tau"], s.interval_low, s.interval_high)
    assert_metrics_within(metrics["mc"], stored, bounds, "mc")
    assert metrics["conformal"]["mc"]["normalised@0.9"] == card["metrics"]["heldout_test_conformal"]["mc"]["normalised@0.9"]


def write_fashion_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Fashion-MNIST-format IDX files a small MLP can learn: class k brightens pixel rows 2k and 2k+1."""
    rng = np.random.default_rng(0)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 80, size=(n, 28, 28))
        for k in range(10):
            images[labels == k, 2 * k:2 * k + 2, :] += 150
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images, gz=True)
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", labels, gz=True)
    return root


def test_train_fashion_mnist_is_reproducible_and_evaluate_reproduces_the_card(tmp_path, monkeypatch):
    from scipy import stats

    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path / "cache"))
    root = write_fashion_mnist(tmp_path / "data")
    flags = ["--data-root", root, "--hidden", "64", "64", "--epochs", "3", "--eval-samples", "20", "--calibrate"]
    proc = mcdrop("train", "fashion-mnist", "-o", tmp_path / "a", *flags)
    assert "epoch 3/3" in proc.stderr and "temperature" in proc.stderr  # plain log lines off a terminal
    mcdrop("train", "fashion-mnist", "-o", tmp_path / "b", *flags)
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["weights_sha256"] == json.loads((tmp_path / "b" / "card.json").read_text())["weights_sha256"]
    assert card["training"]["hidden"] == [64, 64] and card["training"]["calibrate"] is True
    assert (tmp_path / "a" / "weights.safetensors").read_bytes() == (tmp_path / "b" / "weights.safetensors").read_bytes()
    mc = card["metrics"]["test_mc_20"]
    assert stats.binomtest(round(mc["accuracy"] * 200), 200, 0.1, alternative="greater").pvalue < ALPHA
    mcdrop("evaluate", tmp_path / "a", "--data-root", root, "--json", tmp_path / "ev.json")
    metrics = json.loads((tmp_path / "ev.json").read_text())
    assert_metrics_within(metrics["mc"], mc, _bounds(tmp_path / "a", root, "mc", n_samples=20), "mc")


def _bounds(model: Path | str, root: Path | None, mode: str, n_samples: int) -> dict[str, float]:
    """How far the card's metrics may move on another machine or thread count (tests/tolerances.py)."""
    from mcdrop.nets.artifacts import load_model
    from mcdrop.sampling.engine import MCEngine
    from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist
    from mcdrop.uncertainty.prediction import predict

    x, y = load_fashion_mnist(root, train=False)
    result = predict(MCEngine(load_model(model)[0]), fashion_mnist_features(x), mode=mode, n_samples=n_samples,
                     seed=0, return_samples=True)
    return classification_metric_bounds(result.summary.probabilities, y, result.samples.abs().amax(dim=(0, 2)))


def test_train_errors_name_the_flag(tmp_path, cli):
    run = cli("train", "fashion-mnist", "-o", tmp_path / "m", "--dropout", "0.5")
    assert run.returncode == 2 and "--dropout" in run.stderr and "one rate per hidden layer (2)" in run.stderr
    run = cli("train", "fashion-mnist", "-o", tmp_path / "m", "--schedule", "step")
    assert run.returncode == 2 and "'constant' or 'cosine'" in run.stderr and "Traceback" not in run.stderr
    (tmp_path / "c.json").write_text('{"layers": 3}')
    run = cli("train", "fashion-mnist", "-o", tmp_path / "m", "--config", tmp_path / "c.json")
    assert run.returncode == 2 and "layers" in run.stderr
    run = cli("train", "fashion-mnist", "-o", tmp_path / "m", "--data-root", tmp_path / "none")
    assert run.returncode == 1 and "Fashion-MNIST not found" in run.stderr


def test_evaluate_errors(tmp_path, cli):
    run = cli("evaluate", tmp_path / "missing-model")
    assert run.returncode == 2 and "not found" in run.stderr  # a bad argument; a damaged model exits 1
    run = cli("evaluate", "--samples", "0")
    assert run.returncode == 2 and "--samples" in run.stderr
    (tmp_path / "ood.csv").write_text("1,2\n")
    run = cli("evaluate", "--ood", tmp_path / "ood.csv")
    assert run.returncode == 2 and "IDX or .npy" in run.stderr


@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
def test_evaluate_shipped_classifier_reproduces_its_card_and_flags_ood(tmp_path):
    """Inverted test images and uniform noise are OOD inputs we can make; the card's metrics come back."""
    from mcdrop.training.data import read_idx

    images = read_idx(SHARED_DATA / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz")[:1000].numpy()
    noise = np.random.default_rng(0).integers(0, 256, size=(500, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "ood.npy", np.concatenate([255 - images, noise]))
    proc = mcdrop("evaluate", "fashion-mnist", "--ood", tmp_path / "ood.npy", "--json", tmp_path / "ev.json")
    assert "ood_score" in proc.stdout and "abstention" in proc.stdout
    metrics = json.loads((tmp_path / "ev.json").read_text())
    card = json.loads((bundled_models_dir() / "fashion-mnist" / "card.json").read_text())["metrics"]
    for mode, stored in (("mc", card["test_mc_50"]), ("deterministic", card["test_deterministic"])):
        assert_metrics_within(metrics[mode], stored, _bounds("fashion-mnist", None, mode, n_samples=50), mode)
    ood = metrics["ood"]["ood.npy"]
    assert ood["ood_score"]["auroc"] > 0.99 and ood["ood_score"]["fpr95"] < 0.05  # the shipped model: about 1.0
    assert set(ood) >= {"mc_mutual_information", "mc_predictive_entropy", "deterministic_entropy"}
    # the card's conformal coverage comes back (the same calibration, seed and rows)
    for level in ("0.9", "0.95"):
        got, stored = metrics["conformal"]["mc"][f"aps@{level}"], card["test_conformal"]["mc"][f"aps@{level}"]
        assert abs(got["coverage"] - stored["coverage"]) <= 0.002  # a handful of inputs within rounding of q


@needs_data("uci", "yacht", "data.txt")
def test_bench_uci_quick_on_real_yacht(tmp_path):
    proc = mcdrop("bench", "uci", "--quick", "-o", tmp_path / "uci.md")
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| yacht"))
    rmse = float(row.split("|")[7].split("±")[0])
    assert 0 < rmse < 15.0  # yacht targets spread about 15; a broken pipeline lands far off
