"""The shipped models trained on covariate shifts (issue 22), ``fashion-cnn-robust`` and ``fashion-mnist-robust``:
each card's per-shift table is what the service decides on those images, keeps the issue's targets except on the
sets the README names as missed, and BENCHMARKS quotes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from scipy import stats

from mcdrop.nets.artifacts import bundled_models_dir, load_artifact
from mcdrop.schemas import PredictRequest
from mcdrop.serving.predictor import Predictor
from mcdrop.training import shifts
from tests.conftest import ALPHA, SHARED_DATA, needs_data

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ROBUST = ["fashion-cnn-robust", "fashion-mnist-robust"]
MISSED = {"fashion-cnn-robust": set(), "fashion-mnist-robust": {"elastic 2"}}
"""The sets on which a model's error among answered is significantly above 5%, as its README row says."""


def card(name: str) -> dict:
    return json.loads((bundled_models_dir() / name / "card.json").read_text())


@pytest.mark.parametrize("name", ROBUST)
def test_card_per_shift_table_meets_the_issue_targets_with_their_sampling_error(name):
    """Issue 22's targets on the card's sets: error among answered at most 5% under every shift and 2% in
    distribution, each unless a one-sided binomial test cannot reject it (few answered inputs), and at least 70%
    of clean images answered; the sets listed in MISSED do reject it, and the README's row names them."""
    table = card(name)["metrics"]["covariate_shift"]
    sets = table["sets"]
    assert len(sets) == 1 + 2 * len(shifts.KINDS) and table["images"] >= 1000
    assert sets["clean"]["answered"] >= 0.70
    rejected = set()
    for set_name, row in sets.items():
        target = 0.02 if set_name == "clean" else 0.05
        if row["answered_n"]:
            above = stats.binomtest(row["errors_n"], row["answered_n"], target, alternative="greater").pvalue
            if above <= ALPHA:
                rejected.add(set_name)
    assert rejected == MISSED[name]
    readme_row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{name}`"))
    for set_name in rejected:  # the row says what the miss is: its errors among its answers
        row = sets[set_name]
        assert f"{row['error_among_answered']:.1%} of those ({row['errors_n']} / {row['answered_n']})" in readme_row
    service = card(name)["metrics"]["test_conformal"]["mc"]["abstention"]["with_ood_flag"]
    assert abs(sets["clean"]["answered"] - service["coverage"]) < 0.05


@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
@pytest.mark.parametrize("name", ROBUST)
def test_shift_metrics_are_the_services_decisions(name):
    """On 40 test images, blurred, shift_metrics' answered count and errors equal what the predictor (the
    service's and CLI's path) returns as ``abstain`` for the same seed and N."""
    from mcdrop.training.data import read_idx

    artifact = load_artifact(name)
    raw = SHARED_DATA / "FashionMNIST" / "raw"
    images = read_idx(raw / "t10k-images-idx3-ubyte.gz")[:40].float() / 255
    labels = read_idx(raw / "t10k-labels-idx1-ubyte.gz")[:40].numpy()
    got = shifts.shift_metrics(artifact, images, labels, n_samples=10, kinds=("blur",))
    x = shifts.shifted(images, "blur", 2).reshape(40, -1).numpy()
    answer = Predictor([name]).predict(PredictRequest.model_validate(
        {"inputs": x, "model": name, "n_samples": 10, "seed": 0}, strict=False))
    answered = ~answer.columns["abstain"].astype(bool)
    predicted = answer.columns["predicted_class"]
    assert 0 < answered.sum() < 40  # both decisions occur, so the comparison is not vacuous
    assert got["blur 2"]["answered_n"] == int(answered.sum())
    assert got["blur 2"]["errors_n"] == int((predicted[answered] != labels[answered]).sum())


@pytest.mark.parametrize("name", [*ROBUST, "fashion-mnist", "fashion-cnn"])
def test_benchmarks_quote_the_card_per_shift_table(name):
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text[text.index(f"`{name}` per shift"):].splitlines()
    start = next(i for i, line in enumerate(section) if line.startswith("|"))
    table = section[start:section.index("", start)]  # the first table after the heading, up to its blank line
    sets = card(name)["metrics"]["covariate_shift"]["sets"]
    rows = 0
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] in sets:
            row = sets[cells[0]]
            assert cells[1] == shifts.kind_of(cells[0]) and cells[2] == f"{row['accuracy']:.3f}", line
            assert cells[3] == f"{row['answered']:.1%}", line
            err = re.match(r"([\d.]+%|n/a) \((\d+)/(\d+)\)", cells[4]).groups()
            assert (int(err[1]), int(err[2])) == (row["errors_n"], row["answered_n"]), line
            share = row["error_among_answered"]
            assert err[0] == ("n/a" if share is None else f"{share:.1%}"), line
            rows += 1
    assert rows == len(sets)


@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
def test_every_shift_kind_keeps_shape_and_range():
    from mcdrop.training.data import read_idx

    images = read_idx(SHARED_DATA / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz")[:6].float() / 255
    for kind in shifts.KINDS:
        for strength in (1, 2):
            out = shifts.shifted(images, kind, strength)
            assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1, kind
            assert not torch.equal(out, images), kind
    with pytest.raises(ValueError, match="unknown shift"):
        shifts.shifted(images, "warp", 1)
    assert [shifts.kind_of(n) for n in ("clean", "blur 1", "scale 2", "gamma 1")] == \
        ["clean", "design", "held out", "unseen"]
