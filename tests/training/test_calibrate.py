"""Calibration of the shipped models on data they were not fitted on: conformal coverage inside the bounds the
finite-sample guarantee gives, abstention meeting its risk, the OOD score separating proxy sets."""

from __future__ import annotations

import pytest
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.training.calibrate import LEVELS, coverage_report
from mcdrop.uncertainty import conformal
from tests.conftest import ALPHA, SHARED_DATA, needs_data

pytestmark = [pytest.mark.data, pytest.mark.slow]


@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
def test_shipped_classifier_sets_cover_the_test_split():
    from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist

    artifact = load_artifact("fashion-mnist")
    x, y = load_fashion_mnist(SHARED_DATA, train=False)
    report = coverage_report(artifact.calibration, artifact.model, (fashion_mnist_features(x), y), n_samples=50, seed=1)
    n_cal = artifact.card.calibration["rows"]["calibration"]
    checks = len(LEVELS) * 2 * len(conformal.METHODS)
    for level in LEVELS:
        lo, hi = conformal.coverage_interval(len(y), n_cal, level, alpha=ALPHA / checks)
        for mode in ("deterministic", "mc"):
            for method in conformal.METHODS:
                got = report[mode][f"{method}@{level:g}"]
                if method in conformal.RANDOMIZED:
                    assert lo <= got["coverage"] <= hi, (mode, method, level, got, lo, hi)
                else:  # the top class is always added: at least the level, never empty
                    assert lo <= got["coverage"] and got["empty"] == 0, (mode, method, level, got, lo)
    for mode in ("deterministic", "mc"):
        abstention = report[mode]["abstention"]
        assert abstention["risk"] <= 0.02 and 0.5 < abstention["coverage"] < 0.95, (mode, abstention)


@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
def test_abstention_with_the_ood_flag_is_the_services_default_decision():
    """``with_ood_flag`` counts the rows the predictor (the service's and CLI's path) answers, with the same seed
    and N, and its error among them; it answers fewer rows than the uncertainty threshold alone."""
    from mcdrop.schemas import PredictRequest
    from mcdrop.serving.predictor import Predictor
    from mcdrop.training.data import fashion_mnist_features, load_fashion_mnist

    artifact = load_artifact("fashion-mnist")
    x, y = load_fashion_mnist(SHARED_DATA, train=False)
    x, y = fashion_mnist_features(x)[:600], y[:600]
    report = coverage_report(artifact.calibration, artifact.model, (x, y), n_samples=20, seed=3)
    answer = Predictor(["fashion-mnist"]).predict(PredictRequest.model_validate(
        {"inputs": x.numpy(), "model": "fashion-mnist", "n_samples": 20, "seed": 3}, strict=False))
    answered = ~answer.columns["abstain"].astype(bool)
    wrong = answer.columns["predicted_class"] != y.numpy()
    both = report["mc"]["abstention"]["with_ood_flag"]
    assert 0 < answered.sum() < len(y) and answer.columns["abstain_out_of_distribution"].any()  # not vacuous
    assert both["coverage"] == pytest.approx(answered.mean(), abs=1e-12)
    assert both["risk"] == pytest.approx(wrong[answered].mean(), abs=1e-12)
    assert both["coverage"] < report["mc"]["abstention"]["coverage"]


@needs_data("uci", "concrete", "data.txt")
def test_shipped_regressor_intervals_cover_its_held_out_rows():
    from mcdrop.training.data import load_uci
    from mcdrop.training.uci import holdout_split

    artifact = load_artifact("concrete")
    holdout = artifact.card.training["holdout"]
    data = load_uci("concrete", SHARED_DATA)
    _, cal, test = holdout_split(len(data.y), holdout["fraction"], holdout["seed"])
    xs, ys = torch.tensor(data.x[test], dtype=torch.float32), torch.tensor(data.y[test], dtype=torch.float32)
    report = coverage_report(artifact.calibration, artifact.model, (xs, ys), n_samples=2000, seed=1)
    for level in LEVELS:
        lo, hi = conformal.coverage_interval(len(test), len(cal), level, alpha=ALPHA / 6)
        for mode in ("deterministic", "mc"):
            got = report[mode][f"normalised@{level:g}"]["coverage"]
            assert lo <= got <= hi, (mode, level, got, lo, hi)
