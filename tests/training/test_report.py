"""The report: every figure a valid PNG that the page shows, with its numbers."""

from __future__ import annotations

import re

import matplotlib.image
import pytest
import torch

from mcdrop.core.artifacts import load_artifact
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
