"""Predictor: requests merged into one engine call answer as if alone; a row whose output overflows is an
error for its own request only."""

from __future__ import annotations

import pytest
import torch

from mcdrop import DropoutMLP
from mcdrop.artifacts import save_model
from mcdrop.predictor import Predictor, RequestError
from mcdrop.schemas import PredictRequest, PredictResponse
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_probabilities_close


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    paths = write_tiny_models(tmp_path_factory.mktemp("models"))
    return Predictor([str(paths["tiny-cls"]), str(paths["tiny-reg"])])


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
    return PredictRequest(**{"inputs": [[0.1, 0.2, 0.3, 0.4]], "mode": "mc", "n_samples": 20, **fields})


def test_merged_requests_answer_as_alone(predictor):
    a = request(inputs=[[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0]], seed=1)
    b = request(inputs=[[2.0, 0.0, -0.3, 0.4]], seed=2, row_offset=5)
    merged = predictor.predict_many([a, b])
    for req, answer in zip((a, b), merged, strict=True):
        alone = predictor.predict(req)
        assert isinstance(answer, PredictResponse)
        for got, want in zip(answer.predictions, alone.predictions, strict=True):
            assert_probabilities_close(got.probabilities, want.probabilities)


def test_invalid_request_does_not_fail_its_neighbours(predictor):
    good, bad = request(seed=1), request(inputs=[[1.0, 2.0]], seed=1)
    answers = predictor.predict_many([good, bad])
    assert isinstance(answers[0], PredictResponse)
    assert isinstance(answers[1], RequestError) and answers[1].field == "inputs"


def test_overflowing_output_is_a_422_for_that_request_only(overflowing):
    good = PredictRequest(inputs=[[0.1, 0.2]], n_samples=10, seed=0)
    bad = PredictRequest(inputs=[[0.1, 0.2], [3e38, 3e38]], n_samples=10, seed=0, row_offset=7)
    answers = overflowing.predict_many([good, bad])
    assert isinstance(answers[0], PredictResponse)
    err = answers[1]
    assert isinstance(err, RequestError) and err.status == 422 and err.field == "inputs"
    assert "inputs[1] (row 8)" in str(err) and "overflowed" in str(err)
    with pytest.raises(RequestError, match="overflowed"):
        overflowing.predict_array([[3e38, 3e38]], mode="deterministic")


def test_inputs_beyond_float32_are_refused_by_the_schema():
    with pytest.raises(ValueError, match="less than or equal to 34028234663852886"):
        PredictRequest(inputs=[[1e300, 0.0]])
