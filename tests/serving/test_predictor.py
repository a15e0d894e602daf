"""Predictor: model and server checks as typed errors, merged requests answer as if alone, explicit columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcdrop import DropoutMLP
from mcdrop.nets.artifacts import save_model
from mcdrop.schemas import ClassificationPrediction, Limits, PredictRequest, PredictResult, RegressionPrediction
from mcdrop.serving.errors import InvalidRequest, OutputOverflow, TooLarge, UnknownModel
from mcdrop.serving.predictor import Predictor
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_probabilities_close


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def predictor(paths):
    predictor = Predictor([str(paths["tiny-cls"]), str(paths["tiny-reg"])], limits=Limits(max_rows=8, max_samples=500))
    predictor.warm_up()  # what a server does at start-up (the constructor only loads)
    return predictor


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    """A classifier whose hidden units reach +inf for inputs near 1e38, and whose logits are inf - inf = NaN."""
    model = DropoutMLP(2, [2], 2, dropout=0.1)
    with torch.no_grad():
        model.net[0].weight.fill_(10.0)
        model.net[0].bias.zero_()
        model.net[-1].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
        model.net[-1].bias.zero_()
    path = tmp_path_factory.mktemp("models") / "overflow"
    save_model(model, path, {"name": "overflow", "version": "1", "task": "classification", "input_shape": [2],
                             "input_size": 2, "normalisation": "none"})
    return Predictor([str(path)])


def request(**fields) -> PredictRequest:
    return PredictRequest.model_validate({"inputs": [[0.1, 0.2, 0.3, 0.4]], "mode": "mc", "n_samples": 20, **fields})


def test_merged_requests_answer_as_alone(predictor):
    a = request(inputs=[[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0]], seed=1)
    b = request(inputs=[[2.0, 0.0, -0.3, 0.4]], seed=2, row_offset=5)
    merged = predictor.predict_many([a, b])
    for req, answer in zip((a, b), merged, strict=True):
        assert isinstance(answer, PredictResult)
        alone = predictor.predict(req)
        assert_probabilities_close(answer.probabilities, alone.probabilities)
        assert answer.seed == req.seed and len(answer) == len(req.inputs)


def test_every_response_field_is_filled_or_null_on_purpose(predictor):
    """The columns map onto the response by name, explicitly: a field left null must be one the mode does not
    define or the model's calibration does not provide."""
    mc = predictor.predict(request(seed=0)).predictions[0]
    det = predictor.predict(request(mode="deterministic")).predictions[0]
    uncalibrated = {"ood_score", "prediction_set", "prediction_set_names", "abstain", "abstain_reasons"}
    sampling_only = {"expected_entropy", "mutual_information", "variation_ratio", "probability_std",
                     "probability_stderr"}
    assert set(ClassificationPrediction.model_fields) >= uncalibrated | sampling_only
    assert {k for k, v in mc.model_dump().items() if v is None} == uncalibrated
    assert {k for k, v in det.model_dump().items() if v is None} == uncalibrated | sampling_only
    reg = predictor.predict(request(model="tiny-reg", inputs=[[0.1, 0.2, 0.3]], seed=0)).predictions[0]
    assert isinstance(reg, RegressionPrediction)
    assert {k for k, v in reg.model_dump().items() if v is None} == {"ood_score", "conformal_low", "conformal_high",
                                                                     "abstain", "abstain_reasons"}
    assert reg.variance == pytest.approx(reg.epistemic_variance + reg.aleatoric_variance, rel=1e-6)


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"model": "nope"}, UnknownModel, "model"),
        ({"inputs": [[1.0, 2.0]]}, InvalidRequest, "inputs"),
        ({"inputs": [[0.0] * 4] * 9}, TooLarge, "inputs"),
        ({"n_samples": 501}, InvalidRequest, "n_samples"),
        ({"tolerance": 0.1, "max_samples": 600}, InvalidRequest, "max_samples"),
        ({"coverage": 0.9}, InvalidRequest, "coverage"),
        ({"selective_risk": 0.05}, InvalidRequest, "selective_risk"),
    ],
)
def test_model_and_server_checks_raise_typed_errors(predictor, fields, error, field):
    req = request(**fields)
    with pytest.raises(error) as caught:
        predictor.check(req)
    assert caught.value.field == field
    assert isinstance(predictor.predict_many([req])[0], error)


def test_work_budget(paths):
    tight = Predictor([str(paths["tiny-cls"])], limits=Limits(max_cost=100 * 20 * 112))  # 112 multiply-adds per pass
    assert tight.cost(request()) == 20 * 112
    tight.check(request(inputs=[[0.0] * 4] * 100))
    with pytest.raises(TooLarge, match="budget") as err:
        tight.check(request(inputs=[[0.0] * 4] * 101))
    assert err.value.field == "n_samples"
    adaptive = request(tolerance=0.1, max_samples=400)
    assert tight.cost(adaptive) == 400 * 112  # adaptive work is bounded by its cap


def test_invalid_request_does_not_fail_its_neighbours(predictor):
    good, bad = request(seed=1), request(inputs=[[1.0, 2.0]], seed=1)
    answers = predictor.predict_many([good, bad])
    assert isinstance(answers[0], PredictResult)
    assert isinstance(answers[1], InvalidRequest) and answers[1].field == "inputs"


def test_overflowing_output_is_an_error_for_that_request_only(overflowing):
    good = PredictRequest(inputs=[[0.1, 0.2]], n_samples=10, seed=0)
    bad = PredictRequest(inputs=[[0.1, 0.2], [3e38, 3e38]], n_samples=10, seed=0, row_offset=7)
    answers = overflowing.predict_many([good, bad])
    assert isinstance(answers[0], PredictResult)
    assert isinstance(answers[1], OutputOverflow) and answers[1].field == "inputs"
    assert "inputs[1] (row 8)" in str(answers[1]) and "overflowed" in str(answers[1])
    with pytest.raises(OutputOverflow):
        overflowing.predict_array([[3e38, 3e38]], mode="deterministic")


def test_predict_array_builds_a_real_request(predictor):
    result = predictor.predict_array(np.zeros((3, 4), dtype=np.float64), n_samples=5, seed=3, row_offset=2)
    assert result.probabilities.shape == (3, 3) and result.seed == 3
    with pytest.raises(InvalidRequest, match="n_samples") as err:
        predictor.predict_array(np.zeros((1, 4)), n_samples=0)
    assert err.value.field == "n_samples"
    with pytest.raises(InvalidRequest, match=r"inputs\[0\]\[1\]"):
        predictor.predict_array([[0.0, float("nan"), 0.0, 0.0]])


def test_an_unseeded_request_gets_a_seed_that_reproduces_it(predictor):
    first = predictor.predict(request())
    again = predictor.predict(request(seed=first.seed))
    assert isinstance(first.seed, int)
    assert_probabilities_close(first.probabilities, again.probabilities)


def test_work_puts_every_model_on_the_slowest_ones_scale(predictor):
    """Each model's rate is measured at start-up; a request's work is its multiply-adds at the slowest model's
    speed, so seconds = work / predictor.rate for every model."""
    rates = {card.name: predictor.served(card.name).rate for card in predictor.cards}
    assert all(r > 0 for r in rates.values()) and predictor.rate == min(rates.values())
    for name in rates:
        req = PredictRequest.model_validate({"inputs": [[0.0] * predictor.card(name).input_size] * 3, "model": name,
                                             "n_samples": 10, "seed": 0}, strict=False)
        seconds_alone = predictor.cost(req) / rates[name]
        assert predictor.work(req) / predictor.rate == pytest.approx(seconds_alone, rel=1e-12)
        assert predictor.work(req) <= predictor.cost(req) * (1 + 1e-12)


@pytest.fixture(scope="module")
def shipped():
    return Predictor()  # the bundled default model: wide enough for the fused MC kernel


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mc", "deterministic"])
def test_an_overflowing_row_is_refused_in_both_modes_on_the_fused_path(shipped, mode):
    """On the shipped model a row of 3e38 got finite logits from the fused MC kernel (MC answered 200) while
    deterministic mode refused it; both now raise OutputOverflow, which the doors turn into 422 / one line."""
    rows = np.full((3, 784), 0.5, np.float32)
    rows[2] = 3e38
    with pytest.raises(OutputOverflow, match=r"inputs\[2\]"):
        shipped.predict_array(rows, mode=mode, n_samples=16, seed=1)
    assert shipped.predict_array(rows[:2], mode=mode, n_samples=16, seed=1).probabilities.shape == (2, 10)
    if mode == "mc":
        assert shipped.served().engine._fast_path() is not None, "the fused path did not run"


def test_warm_up_rate_survives_one_stalled_run(paths, monkeypatch):
    """A stall of the process during one timed run (a busy machine at start-up) does not set the price: the rate
    is the best of several runs, well above what the stalled run alone would have set.  (Not compared with an
    unstalled warm-up: the run right after a sleep is itself slower, waking idle threads, by a varying factor.)"""
    import time

    fresh = Predictor([str(paths["tiny-cls"])])
    fresh.warm_up()  # the engine's one-time work, so the measured runs below are not the first
    served = fresh.served("tiny-cls")
    sample, calls = served.engine.sample, []

    def stalls_once(x, n, **kwargs):  # the probe (1 row) is call 1; the first timed run stalls for 1 s
        calls.append(len(x))
        if len(calls) == 2:
            time.sleep(1.0)
        return sample(x, n, **kwargs)

    monkeypatch.setattr(served.engine, "sample", stalls_once)
    stalled_alone = 256 * 16 * served.cost / 1.0  # what the one stalled run would have set, at most
    rate = fresh.warm_up()
    assert calls[0] == 1 and len(calls) == 3  # the probe, the stalled run and one more (past WARM_UP_SECONDS)
    assert rate > 2 * stalled_alone
