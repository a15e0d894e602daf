"""mcdrop.training.imported: calibrating an imported model from held-out rows gives conformal intervals and sets with
the promised coverage on fresh rows (beta-binomial bounds), an OOD score and a refitted temperature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mcdrop
from mcdrop.nets.artifacts import load_artifact
from mcdrop.serving.predictor import Predictor
from mcdrop.training.imported import CalibrationDataError
from mcdrop.uncertainty import conformal
from tests.conftest import ALPHA
from tests.nets.zoo import case


def _heteroscedastic_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = x[:, 0] + (0.1 + x[:, 1].abs()) * torch.randn(n, generator=g)
    return x.numpy(), y.numpy()


@pytest.mark.slow
def test_conformal_intervals_of_an_imported_regressor_cover_fresh_rows(tmp_path):
    model, example, kwargs = case("heteroscedastic")
    mcdrop.export_model(model, tmp_path / "m", example_input=example, **kwargs)
    x, y = _heteroscedastic_rows(1000, seed=1)
    report = mcdrop.calibrate_model(tmp_path / "m", x, y, n_samples=20, seed=0)
    n_cal = report.rows["calibration"]
    assert report.rows == {"density": 400, "fit": 200, "calibration": 400} and report.ood_threshold is not None
    xt, yt = _heteroscedastic_rows(1000, seed=2)
    answer = Predictor([str(tmp_path / "m")]).predict_array(xt, seed=9, n_samples=20, coverage=0.9)
    inside = (yt >= answer.columns["conformal_low"]) & (yt <= answer.columns["conformal_high"])
    lo, hi = conformal.coverage_interval(len(yt), n_cal, 0.9, alpha=ALPHA)
    assert lo <= inside.mean() <= hi
    assert np.isfinite(answer.columns["ood_score"]).all()


@pytest.mark.slow
def test_prediction_sets_of_an_imported_cnn_cover_fresh_rows(tmp_path):
    model, example, kwargs = case("skip_cnn")
    mcdrop.export_model(model, tmp_path / "m", example_input=example, **kwargs)

    def rows(n, seed):
        g = torch.Generator().manual_seed(seed)
        img = torch.randn(n, 2, 6, 6, generator=g)
        labels = (img[:, 0].mean((1, 2)) > 0).long() + (img[:, 1].mean((1, 2)) > 0.1).long()
        return img.reshape(n, -1).numpy(), labels.numpy()

    x, y = rows(600, 1)
    report = mcdrop.calibrate_model(tmp_path / "m", x, y, n_samples=10)
    assert report.temperature is not None and load_artifact(tmp_path / "m").card.temperature == report.temperature
    xt, yt = rows(1000, 2)
    answer = Predictor([str(tmp_path / "m")]).predict_array(xt, seed=3, n_samples=10, coverage=0.9, set_method="lac")
    covered = answer.columns["prediction_set"][np.arange(len(yt)), yt]
    lo, hi = conformal.coverage_interval(len(yt), report.rows["calibration"], 0.9, alpha=ALPHA)
    assert lo <= covered.mean() <= hi
    with pytest.raises(CalibrationDataError, match="expects 72 per row"):
        mcdrop.calibrate_model(tmp_path / "m", x[:, :10], y)


def test_a_classifier_without_a_last_linear_calibrates_without_an_ood_score(tmp_path):
    """A graph whose logits come from a convolution names no feature layer: it gets sets and abstention, no density."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Conv1d(4, 3, 1), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten())
    mcdrop.export_model(model, tmp_path / "m", example_input=torch.randn(2, 1, 8), task="classification")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    report = mcdrop.calibrate_model(tmp_path / "m", x.numpy(), y.numpy(), n_samples=5)
    assert report.ood_threshold is None
    answer = Predictor([str(tmp_path / "m")]).predict_array(x[:4].numpy(), seed=1, n_samples=5, coverage=0.9)
    assert "ood_score" not in answer.columns and answer.columns["prediction_set"].shape == (4, 3)
    assert answer.columns["abstain"].shape == (4,)
    y[y == 2] = 1
    y[0] = 2  # one row of class 2: too few for a density's class Gaussians, and no density is fitted
    assert mcdrop.calibrate_model(tmp_path / "m", x.numpy(), y.numpy(), n_samples=5).ood_threshold is None
