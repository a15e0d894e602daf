"""stop="decision" / "class" through the predictor (the rule read from the calibration), the CLI and a real server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from mcdrop.schemas import Limits
from mcdrop.serving.errors import InvalidRequest, TooLarge
from mcdrop.serving.predictor import Predictor
from tests.server import running_server
from tests.tiny_models import blobs, write_calibrated_model, write_tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    return {**write_tiny_models(directory), "tiny-calibrated": write_calibrated_model(directory)}


@pytest.fixture(scope="module")
def predictor(models):
    return Predictor([str(models["tiny-calibrated"]), str(models["tiny-reg"])], limits=Limits(max_rows=512))


@pytest.mark.parametrize("set_method", ["lac", "aps", "raps"])
def test_each_row_answers_as_a_fixed_n_request_with_its_n(predictor, set_method):
    """Sets and abstention come from the passes a row used: the answer equals a fixed-n request of that row.  (APS
    and RAPS scores sum several probabilities, whose boxes settle slowly: here their rows may all reach the cap.)"""
    x, _ = blobs(60, seed=3, shift=0.1)
    x = x.numpy()
    got = predictor.predict_array(x, stop="decision", seed=7, max_samples=300, coverage=0.9, set_method=set_method,
                                  delta=0.05)
    n = got.n_samples
    assert n.min() >= 8 and (len(np.unique(n)) > 1 or set_method != "lac")
    for i in np.unique(np.r_[np.argmin(n), np.argmax(n), 5]):
        fixed = predictor.predict_array(x[i:i + 1], n_samples=int(n[i]), seed=7, row_offset=int(i), coverage=0.9,
                                        set_method=set_method)
        for column in ("predicted_class", "prediction_set", "abstain"):
            np.testing.assert_array_equal(got.columns[column][i], fixed.columns[column][0], err_msg=column)


def test_class_only_stops_sooner_than_the_full_decision(predictor):
    x = blobs(200, seed=4, shift=0.1)[0].numpy()
    decision = predictor.predict_array(x, stop="decision", seed=1, max_samples=300, coverage=0.9)
    cls = predictor.predict_array(x, stop="class", seed=1, max_samples=300, coverage=0.9)
    assert cls.n_samples.mean() < decision.n_samples.mean()


def test_bad_stop_requests(predictor, models):
    x = blobs(4, seed=0)[0].numpy()
    with pytest.raises(InvalidRequest, match="n_samples applies to fixed N"):
        predictor.predict_array(x, stop="decision", n_samples=20)
    with pytest.raises(InvalidRequest, match="stop applies to mc mode"):
        predictor.predict_array(x, stop="decision", mode="deterministic")
    with pytest.raises(InvalidRequest, match="is a homoscedastic model"):
        predictor.predict_array(np.zeros((2, 3)), stop="class", model="tiny-reg")
    reg = predictor.predict_array(np.random.default_rng(0).normal(size=(5, 3)), stop="decision", model="tiny-reg",
                                  max_samples=100)
    assert reg.n_samples.min() >= 8 and reg.n_samples.max() <= 100
    tight = Predictor([str(models["tiny-calibrated"])], limits=Limits(max_cost=1000.0))
    with pytest.raises(TooLarge, match="max_samples"):  # the budget counts the cap
        tight.predict_array(x, stop="class", max_samples=2000)


def test_cli_score_stop(models, tmp_path):
    x = blobs(30, seed=5, shift=0.1)[0].numpy().astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.csv"
    cmd = [sys.executable, "-m", "mcdrop.cli.main", "score", str(tmp_path / "x.npy"), "-o", str(out), "--model",
           str(models["tiny-calibrated"]), "--stop", "class", "--seed", "2", "--max-samples", "200", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = [int(r["n_samples"]) for r in rows]
    assert len(rows) == 30 and min(n) >= 8 and max(n) <= 200
    bad = subprocess.run([*cmd[:-1], "--samples", "20"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--samples" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.integration
def test_real_server_answers_stop(models):
    x = blobs(20, seed=6, shift=0.1)[0].numpy()
    local = Predictor([str(models["tiny-calibrated"])]).predict_array(x, stop="decision", seed=3, max_samples=200)
    with running_server({"MCDROP_SERVE_MODELS": str(models["tiny-calibrated"])}) as url:
        r = httpx.post(f"{url}/predict", content=json.dumps({"inputs": x.tolist(), "stop": "decision", "seed": 3,
                                                             "max_samples": 200}),
                       headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    n = [p["n_samples"] for p in r.json()["predictions"]]
    assert n == local.n_samples.tolist()
