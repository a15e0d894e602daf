"""The result and its one field table: JSON rows, columns read back, and the order of written columns."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop.result import (
    CLASSIFICATION_FIELDS,
    REGRESSION_FIELDS,
    ClassificationPrediction,
    PredictResponse,
    PredictResult,
    RegressionPrediction,
    summary_fields,
)


def classification(rows: int = 3) -> PredictResult:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=rows)
    sets = p > 0.2
    return PredictResult(model="m", model_version="1", task="classification", mode="mc", seed=5, class_names=list("abcd"),
                         columns={"predicted_class": p.argmax(1), "confidence": p.max(1), "probabilities": p,
                                  "predictive_entropy": rng.random(rows), "mutual_information": rng.random(rows),
                                  "n_samples": np.full(rows, 50), "prediction_set": sets,
                                  "abstain": np.array([True, False, True][:rows]),
                                  "abstain_out_of_distribution": np.array([True, False, False][:rows]),
                                  "abstain_uncertain": np.array([False, False, True][:rows])})


def test_every_table_field_is_a_json_field_in_the_table_order():
    for model, table in ((ClassificationPrediction, CLASSIFICATION_FIELDS), (RegressionPrediction, REGRESSION_FIELDS)):
        assert list(model.model_fields) == [c.name for c in table]
        required = {name for name, f in model.model_fields.items() if f.is_required()}
        assert required == {c.name for c in table if not c.default}


def test_rows_name_the_classes_and_list_the_sets_and_reasons():
    result = classification()
    rows = result.predictions
    assert rows[0].class_name == "abcd"[int(result.predicted_class[0])]
    assert rows[1].prediction_set == np.flatnonzero(result.columns["prediction_set"][1]).tolist()
    assert rows[1].prediction_set_names == ["abcd"[k] for k in rows[1].prediction_set]
    assert [r.abstain_reasons for r in rows] == [["out_of_distribution"], [], ["uncertain"]]
    assert rows[0].expected_entropy is None and rows[0].mutual_information is not None  # absent column -> null


def test_a_response_read_back_gives_the_same_columns():
    result = classification()
    wire = PredictResponse.model_validate_json(result.response().model_dump_json())
    back = PredictResult.from_response(wire, class_names=result.class_names)
    assert set(back.columns) == set(result.columns)
    for name, values in result.columns.items():
        np.testing.assert_array_equal(back.columns[name], values, err_msg=name)
        assert back.columns[name].dtype.kind == np.asarray(values).dtype.kind, name


@pytest.mark.parametrize("task", ["classification", "homoscedastic"])
def test_summary_fields_are_the_table_fields_the_sampler_fills(task):
    from mcdrop.uncertainty.summaries import ClassificationSummary, RegressionSummary

    summary = ClassificationSummary if task == "classification" else RegressionSummary
    assert set(summary_fields(task)) <= set(summary.__dataclass_fields__)
