"""Refreshing a model folder's conformal figures: only the conformal scores and the card's conformal test figures
change; the weights, the density, the thresholds and the abstention data stay; the sha256s stay consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from mcdrop.nets.artifacts import load_artifact, sha256
from mcdrop.training.calibrate import coverage_report
from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist
from mcdrop.training.refresh import refresh_conformal
from mcdrop.uncertainty import conformal
from tests.cli.test_evaluate_bench_train import write_fashion_mnist
from tests.tolerances import PROBABILITY_ATOL


def test_refresh_turns_an_old_calibration_into_the_current_one(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path / "cache"))
    root = write_fashion_mnist(tmp_path / "data")
    model = tmp_path / "m"
    run = cli("train", "fashion-mnist", "-o", model, "--data-root", root, "--hidden", "32", "32", "--epochs", "2",
              "--eval-samples", "10", "--calibrate", "--calibration-samples", "10")
    assert run.returncode == 0, run.stderr
    # make it look calibrated before the non-randomised sets: randomised scores under aps / raps
    tensors = load_file(str(model / "calibration.safetensors"))
    current = {k: v.clone() for k, v in tensors.items()}
    for key in [k for k in tensors if k.endswith((".aps", ".raps"))]:
        tensors[key] = tensors.pop(f"{key}_randomized")
    del tensors["ood.calibration_scores"]  # not stored before drift monitoring either
    save_file(tensors, str(model / "calibration.safetensors"))
    card = json.loads((model / "card.json").read_text())
    card["calibration_sha256"] = sha256(model / "calibration.safetensors")
    del card["metrics"]["test_conformal"]["mc"]["aps@0.9"]
    (model / "card.json").write_text(json.dumps(card))
    old = load_artifact(model).calibration
    assert not old.supports("coverage", "mc", "aps") and old.ood_reference is None

    refreshed = refresh_conformal(model, str(root))
    artifact = load_artifact(model)  # the sha256s in the card match the files
    assert refreshed.weights_sha256 == card["weights_sha256"] and refreshed.created == card["created"]
    after = load_file(str(model / "calibration.safetensors"))
    assert after.keys() == current.keys()
    for key, value in current.items():
        if key.startswith(("conformal.", "ood.")):  # recomputed here: equal up to float rounding of the passes
            np.testing.assert_allclose(after[key].numpy(), value.numpy(), atol=PROBABILITY_ATOL, rtol=0, err_msg=key)
        else:
            assert after[key].equal(value), key
    x, y = load_fashion_mnist(root, train=False)
    expected = coverage_report(artifact.calibration, artifact.model, (fashion_mnist_features(x), y), n_samples=10,
                               seed=0)
    stored = json.loads((model / "card.json").read_text())["metrics"]["test_conformal"]
    for mode in ("mc", "deterministic"):
        for method in conformal.METHODS:
            for level in ("0.8", "0.9", "0.95"):
                assert stored[mode][f"{method}@{level}"] == expected[mode][f"{method}@{level}"], (mode, method, level)
                if method not in conformal.RANDOMIZED:
                    assert stored[mode][f"{method}@{level}"]["empty"] == 0.0


def test_recalibrate_fits_what_training_fits(tmp_path, cli, monkeypatch):
    """``--recalibrate`` on a card whose OOD score was the old maximum over layers gives back the calibration
    and card figures ``mcdrop train`` wrote (the mean over the current feature layers), keeps the weights and
    drops the covariate-shift table that was measured with the old score."""
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path / "cache"))
    root = write_fashion_mnist(tmp_path / "data")
    model = tmp_path / "m"
    run = cli("train", "fashion-mnist", "-o", model, "--data-root", root, "--hidden", "32", "32", "--epochs", "2",
              "--eval-samples", "10", "--calibrate")
    assert run.returncode == 0, run.stderr
    trained = json.loads((model / "card.json").read_text())
    tensors = load_file(str(model / "calibration.safetensors"))
    card = json.loads(json.dumps(trained))
    del card["calibration"]["density_combine"]  # as cards were written before the mean
    card["metrics"]["covariate_shift"] = {"images": 1, "n_samples": 1, "seed": 0, "sets": {}}
    (model / "card.json").write_text(json.dumps(card))
    assert load_artifact(model).calibration.density.combine == "max"

    refreshed = refresh_conformal(model, str(root), recalibrate=True)
    artifact = load_artifact(model)
    assert artifact.calibration.density.combine == "mean" and refreshed.weights_sha256 == trained["weights_sha256"]
    assert "covariate_shift" not in refreshed.metrics
    after = load_file(str(model / "calibration.safetensors"))
    assert after.keys() == tensors.keys()
    for key, value in tensors.items():
        np.testing.assert_allclose(after[key].numpy(), value.numpy(), atol=PROBABILITY_ATOL, rtol=1e-5, err_msg=key)
    assert json.loads((model / "card.json").read_text())["calibration"] == trained["calibration"]
    for proxy, row in trained["metrics"]["ood_proxies"].items():
        for score, figures in row.items():
            for name, value in figures.items():
                assert abs(refreshed.metrics["ood_proxies"][proxy][score][name] - value) < 1e-3, (proxy, score, name)


def test_recalibrate_refuses_a_model_not_calibrated_on_fashion_mnist(tmp_path):
    """A model calibrated on its own rows (no Fashion-MNIST training block) is not refitted on other data."""
    from tests.tiny_models import write_calibrated_model

    path = write_calibrated_model(tmp_path)
    before = (path / "calibration.safetensors").read_bytes()
    with pytest.raises(ValueError, match="was not calibrated by mcdrop train on Fashion-MNIST"):
        refresh_conformal(path, str(tmp_path / "no-data"), recalibrate=True)
    assert (path / "calibration.safetensors").read_bytes() == before
