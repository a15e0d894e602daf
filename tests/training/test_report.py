"""The report: every figure a valid PNG that the page shows, with its numbers."""

from __future__ import annotations

import re

import matplotlib.image
import pytest
import torch

from mcdrop.nets.artifacts import load_artifact
from mcdrop.training.report import classifier_report, write_page
from tests.conftest import needs_data
from tests.tiny_models import blobs, write_calibrated_model

PNG = b"\x89PNG\r\n\x1a\n"


def check_page(out, report):
    page = (out / "index.html").read_text()
    figures = [s["figure"] for s in report["sections"]]
    assert figures and set(re.findall(r'<img src="([^"]+)"', page)) == set(figures)
    for name in figures:
        data = (out / name).read_bytes()
        assert data.startswith(PNG), name
        height, width, _ = matplotlib.image.imread(out / name).shape
        assert height > 200 and width > 300, name
    for section in report["sections"]:
        assert section["title"] in page and all(k in page for k in section["numbers"])


def test_classifier_report_on_a_calibrated_model(tmp_path):
    artifact = load_artifact(write_calibrated_model(tmp_path / "models"))
    x, y = blobs(400, seed=9, shift=0.1)
    proxies = {"noise": torch.rand(200, 8) * 3, "shifted": x[:200] + 1.0}
    out = tmp_path / "report"
    out.mkdir()
    report = classifier_report(artifact.model, artifact.card, artifact.calibration, x, y, proxies, out, n_samples=10)
    write_page(out, report, artifact.card)
    assert [s["title"] for s in report["sections"]] == ["Calibration", "Uncertainty on the test images", "Abstention",
                                                          "Out-of-distribution proxies", "Conformal prediction sets"]
    check_page(out, report)


@pytest.mark.slow
@needs_data("uci", "concrete", "data.txt")
def test_regressor_report_from_the_command_line(tmp_path, cli):
    run = cli("report", "concrete", "-o", tmp_path / "r", "--samples", 200)
    assert run.returncode == 0, run.stderr
    page = (tmp_path / "r" / "index.html").read_text()
    assert "interval_calibration.png" in page and "residuals.png" in page and "held out of training" in page
    for name in ("interval_calibration.png", "residuals.png"):
        assert (tmp_path / "r" / name).read_bytes().startswith(PNG)


@pytest.mark.slow
@pytest.mark.data
@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
def test_report_of_the_shipped_classifier_shows_the_card_numbers(tmp_path, cli):
    """`mcdrop report` and the card compute their figures with one function at the same seed and N: the report's
    metrics.json and the card agree to within a few inputs lying on a threshold (tests/tolerances.py), and the
    page shows the card's numbers."""
    import json

    from mcdrop.nets.artifacts import bundled_models_dir

    run = cli("report", "fashion-mnist", "-o", tmp_path / "r")
    assert run.returncode == 0, run.stderr
    got = json.loads((tmp_path / "r" / "metrics.json").read_text())
    card = json.loads((bundled_models_dir() / "fashion-mnist" / "card.json").read_text())["metrics"]
    few = 3 / 10_000  # three test images on the other side of a threshold
    for mode in ("mc", "deterministic"):
        stored, measured = card["test_conformal"][mode], got["test_conformal"][mode]
        assert {k for k in stored if "@" in k} == {k for k in measured if "@" in k}
        for key in (k for k in stored if "@" in k):
            for field in ("coverage", "empty"):
                assert abs(measured[key][field] - stored[key][field]) <= few, (mode, key, field)
        for field in ("coverage", "risk"):
            assert abs(measured["abstention"][field] - stored["abstention"][field]) <= few, (mode, field)
    for proxy, scores in card["ood_proxies"].items():
        for score, row in scores.items():
            assert abs(got["ood_proxies"][proxy][score]["auroc"] - row["auroc"]) <= 1e-3, (proxy, score)
    page = (tmp_path / "r" / "index.html").read_text()
    mc = card["test_conformal"]["mc"]
    assert f"answers {mc['abstention']['coverage']:.1%}, error rate {mc['abstention']['risk']:.2%}" in page
    assert f"{card['ood_proxies']['flip']['ood_score']['auroc']:.3f}" in page
    assert "held-back" not in page
