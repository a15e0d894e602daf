"""Refreshing a model folder's conformal figures: only the conformal scores and the card's conformal test figures
change; the weights, the density, the thresholds and the abstention data stay; the sha256s stay consistent."""

from __future__ import annotations

import json

import numpy as np
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
