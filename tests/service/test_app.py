"""The routes in-process (no BentoML, no network): JSON and .npy in, JSON and .npy out, every status, strict and
bounded validation, and schemathesis against the OpenAPI document."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from mcdrop.schemas import Limits, PredictRequest, PredictResponse
from mcdrop.service.app import create_app
from mcdrop.serving.config import ServiceConfig
from mcdrop.serving.errors import Overloaded
from mcdrop.serving.predictor import Predictor
from mcdrop.serving.scheduler import Scheduler
from mcdrop.wire import META_HEADER, NPY, decode_result, encode_npy
from tests.tiny_models import write_calibrated_model, write_tiny_models
from tests.tolerances import assert_probabilities_close

LIMITS = Limits(max_rows=8, max_samples=500, max_cost=8 * 500 * 112 + 1, timeout_s=30)
ROW = [0.5, -1.0, 2.0, 0.1]


STATES: list = []


def make_state(models, **scheduler_options):
    predictor = Predictor([str(models["tiny-cls"]), str(models["tiny-reg"]), str(models["tiny-calibrated"])],
                          limits=LIMITS)
    observed: list = []
    state = SimpleNamespace(config=ServiceConfig(limits=LIMITS), predictor=predictor, observed=observed,
                            scheduler=Scheduler(predictor, timeout_s=30, **scheduler_options),
                            observe=lambda req, result, seconds: observed.append((req, result)))
    STATES.append(state)
    return state


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    for state in STATES:
        state.scheduler.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    return {**write_tiny_models(directory), "tiny-calibrated": write_calibrated_model(directory)}


@pytest.fixture(scope="module")
def state(models):
    return make_state(models)


@pytest.fixture(scope="module")
def app(state):
    return create_app(lambda: state)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def post(client, body, **headers):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post("/predict", content=content, headers={"content-type": "application/json", **headers})


def test_json_in_json_out_equals_the_predictor(client, state):
    r = post(client, {"inputs": [ROW, [0.0, 1.0, 0.0, 1.0]], "n_samples": 25, "seed": 9})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = PredictResponse.model_validate(r.json())
    want = state.predictor.predict(PredictRequest(inputs=[ROW, [0.0, 1.0, 0.0, 1.0]], n_samples=25, seed=9))
    assert_probabilities_close(body.probabilities, want.probabilities)
    assert body.seed == 9 and body.predictions[0].class_name in {"a", "b", "c"} and body.notes == []


def test_npy_in_npy_out_equals_json(client):
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    r = client.post("/predict?n_samples=30&seed=4&return_samples=true", content=encode_npy(x),
                    headers={"content-type": NPY, "accept": NPY})
    assert r.status_code == 200 and r.headers["content-type"] == NPY
    binary = decode_result(r.content, r.headers[META_HEADER])
    plain = post(client, {"inputs": x.tolist(), "n_samples": 30, "seed": 4}).json()
    assert_probabilities_close(binary.probabilities, [p["probabilities"] for p in plain["predictions"]])
    assert binary.samples.shape == (30, 5, 3) and binary.seed == 4 and binary.class_names == ["a", "b", "c"]
    as_json = client.post("/predict?seed=4&n_samples=30", content=encode_npy(x), headers={"content-type": NPY})
    assert as_json.headers["content-type"] == "application/json" and len(as_json.json()["predictions"]) == 5


def npy_with_header(header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not an array", "not a .npy array"),
        (encode_npy(np.zeros((2, 4), np.float32))[:-3], "holds 29 bytes"),
        (npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (1000, 4)}, b"\0" * 32), "announces shape"),
        (encode_npy(np.zeros((2, 4), bool)), "expected numbers"),
        (encode_npy(np.zeros(4, np.float32)), "expected rows of features"),
        (npy_with_header({"descr": "|O", "fortran_order": False, "shape": (1, 4)}, b"\0" * 32), "expected numbers"),
        (encode_npy(np.array([[np.nan, 0, 0, 0]], np.float32)), r"inputs\[0\]\[0\] is nan"),
        (encode_npy(np.full((1, 4), 1e300)), "float32 range"),
    ],
)
def test_malformed_or_lying_npy_is_a_400(client, body, message):
    import re

    r = client.post("/predict", content=body, headers={"content-type": NPY})
    assert r.status_code == 400 and r.json()["field"] in ("body", "inputs"), r.text
    assert re.search(message, r.json()["error"]), r.json()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"inputs": [[1.0, 2.0]]}, 400, "inputs"),
        ('{"inputs": [[1.0, 2.0, NaN, 4.0]]}', 400, "inputs"),
        ('{"inputs": [[1.0, 2.0, Infinity, 4.0]]}', 400, "inputs"),
        ({"inputs": [[1.0, "x", 3.0, 4.0]]}, 400, "inputs"),
        ({"inputs": [[1.0, "0.5", 3.0, 4.0]]}, 400, "inputs"),
        ({"inputs": [[1.0, True, 3.0, 4.0]]}, 400, "inputs"),
        ({"inputs": [[1.0, None, 3.0, 4.0]]}, 400, "inputs"),
        ({"inputs": [[1.0, 2.0, 3.0, 4.0], [1.0]]}, 400, "inputs"),
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": [ROW] * 9}, 413, "inputs"),
        ({"inputs": [ROW], "n_samples": 0}, 400, "n_samples"),
        ({"inputs": [ROW], "n_samples": "50"}, 400, "n_samples"),
        ({"inputs": [ROW], "n_samples": True}, 400, "n_samples"),
        ({"inputs": [ROW], "n_samples": 501}, 400, "n_samples"),
        ({"inputs": [ROW], "n_samples": 20, "tolerance": 0.1, "max_samples": 10}, 400, "max_samples"),
        ({"inputs": [ROW], "model": "nope"}, 404, "model"),
        ({"inputs": [ROW], "model": "m" * 1_000_000}, 400, "model"),
        ({"inputs": [ROW], "mode": "bayes"}, 400, "mode"),
        ({"inputs": [ROW], "seed": -1}, 400, "seed"),
        ({"inputs": [ROW], "level": 1.0}, 400, "level"),
        ({"inputs": [ROW], "coverage": 0.9}, 400, "coverage"),
        ({"inputs": [ROW], "coverage": 1.5}, 400, "coverage"),
        ({"inputs": [ROW], "surprise": 1}, 400, "surprise"),
        ({"inputs": [ROW, ROW], "row_offset": 2**31 - 1}, 400, "row_offset"),
        ('{"inputs": [[1.0, 2.0', 400, "body"),
        ("[1, 2, 3]", 400, "body"),
        ("", 400, "body"),
    ],
)
def test_bad_input_is_a_short_4xx_naming_the_field(client, body, status, field):
    r = post(client, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field, err
    assert err["error"] and "validation error for" not in err["error"] and len(r.content) < 3000


def test_a_huge_bad_body_gets_one_short_error(client):
    """4,096 rows of 784 strings: one error naming the first cell and counting the rest, not 3.2 million."""
    r = post(client, {"inputs": [["a"] * 784] * 4096})
    assert r.status_code == 400 and len(r.content) < 2000
    assert r.json()["error_count"] == 1 and "3211263 more values are not numbers" in r.json()["error"]


def test_query_parameters_belong_to_npy_bodies(client):
    r = client.post("/predict?n_samples=5", content=json.dumps({"inputs": [ROW]}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "n_samples"
    r = client.post("/predict?seed=1&seed=2", content=encode_npy(np.zeros((1, 4))), headers={"content-type": NPY})
    assert r.status_code == 400 and r.json()["field"] == "seed"
    r = client.post("/predict?n_samples=many", content=encode_npy(np.zeros((1, 4))), headers={"content-type": NPY})
    assert r.status_code == 400 and r.json()["field"] == "n_samples"


def test_work_beyond_the_budget_is_413(models):
    tight = make_state(models)
    tight.predictor.limits = Limits(max_rows=8, max_samples=500, max_cost=4 * 100 * 112)
    c = TestClient(create_app(lambda: tight))
    assert post(c, {"inputs": [ROW] * 4, "n_samples": 100}).status_code == 200
    r = post(c, {"inputs": [ROW] * 5, "n_samples": 100})
    assert r.status_code == 413 and r.json()["field"] == "n_samples" and "MCDROP_MAX_COST" in r.json()["error"]


def test_overload_is_503_with_retry_after(models):
    """The door's mapping of the scheduler's refusal (when it refuses is tests/serving/test_scheduler.py's: only
    behind queued work, which a tiny model cannot keep queued here)."""
    busy = make_state(models)

    async def refuse(request, **options):
        raise Overloaded("the server is busy: 40.0 s of queued work, and this request needs about 1.0 s more")

    busy.scheduler.submit = refuse
    r = post(TestClient(create_app(lambda: busy)), {"inputs": [ROW], "n_samples": 50})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"].startswith("the server is busy: 40.0 s of queued work")


def test_deadline_is_504(models):
    slow = make_state(models)
    slow.scheduler.timeout_s = 0.05
    slow.predictor.limits = Limits(max_rows=8, max_samples=10**6, max_cost=None)
    r = post(TestClient(create_app(lambda: slow)), {"inputs": [ROW] * 8, "n_samples": 10**6})
    assert r.status_code == 504 and "took longer than" in r.json()["error"]


@pytest.mark.parametrize("mode", ["mc", "deterministic"])
def test_calibrated_model_answers_sets_scores_and_abstentions(client, mode):
    rows = np.random.default_rng(1).uniform(size=(6, 8)).tolist()
    r = post(client, {"inputs": rows, "model": "tiny-calibrated", "mode": mode, "n_samples": 20, "seed": 2,
                      "coverage": 0.9, "set_method": "raps", "selective_risk": 0.2})
    assert r.status_code == 200, r.text
    for p in PredictResponse.model_validate(r.json()).predictions:
        assert p.ood_score is not None and isinstance(p.prediction_set, list) and p.abstain is not None
        assert p.prediction_set_names == [["a", "b", "c", "d"][c] for c in p.prediction_set]
    binary = client.post("/predict?model=tiny-calibrated&coverage=0.9&seed=2&n_samples=20&mode=" + mode,
                         content=encode_npy(np.asarray(rows, np.float32)), headers={"content-type": NPY, "accept": NPY})
    result = decode_result(binary.content, binary.headers[META_HEADER])
    assert result.columns["prediction_set"].shape == (6, 4) and result.columns["abstain"].dtype == bool


def test_models_openapi_docs_and_unknown_routes(client):
    body = client.get("/models").json()
    assert body["default"] == "tiny-cls" and body["limits"]["max_rows"] == 8 and body["models"][0]["cost"] == 112
    doc = client.get("/openapi.json").json()
    assert doc["openapi"] == "3.0.3" and set(doc["paths"]["/predict"]["post"]["responses"]) >= {"200", "400", "413", "415"}
    assert client.get("/docs").status_code == 404  # off unless MCDROP_DOCS=1
    r = client.get("/nowhere")
    assert r.status_code == 404 and "POST /predict" in r.json()["error"]
    assert client.get("/predict").status_code == 405


def test_every_prediction_and_refusal_is_observed(client, state):
    before = len(state.observed)
    post(client, {"inputs": [ROW], "n_samples": 3})
    post(client, {"inputs": [ROW], "model": "nope"})
    post(client, {"inputs": "nope"})  # not a request at all: nothing to observe
    assert len(state.observed) == before + 2
    assert state.observed[-2][1] is not None and state.observed[-1][1] is None


def test_openapi_document_matches_the_answers(app):
    """Schemathesis, every check but positive_data_acceptance (a request can match the schema and still not fit the
    model, e.g. rows of another width: a documented 400), against the routes in-process."""
    from hypothesis import given
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /predict", "GET /models", "POST /acquire"}
    operations = [op for op in operations if op.path in ("/predict", "/models", "/acquire")]  # the rest are BentoML's
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()


def test_405_names_the_allowed_methods(client):
    r = client.post("/models")
    assert r.status_code == 405 and "GET" in r.headers["allow"] and "GET" in r.json()["error"]
    assert client.get("/predict").headers["allow"] == "POST"


def test_openapi_ties_query_parameters_to_npy_bodies(client):
    """Query parameters apply to .npy bodies only (a JSON body with one is 400), and OpenAPI 3.0 parameters apply
    to every body type, so they are listed under the .npy body, not as the operation's parameters."""
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert "parameters" not in operation
    query = {p["name"] for p in operation["requestBody"]["content"][NPY]["x-query-parameters"]}
    assert {"n_samples", "seed", "max_samples", "model"} <= query and "inputs" not in query
    assert all(p["in"] == "query" for p in operation["requestBody"]["content"][NPY]["x-query-parameters"])


def test_the_max_samples_rule_is_described_and_named(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    assert "max(n_samples, 8)" in schema["properties"]["max_samples"]["description"]
    r = post(client, {"inputs": [ROW], "n_samples": 20, "tolerance": 0.1, "max_samples": 10})
    assert r.status_code == 400 and r.json()["field"] == "max_samples" and "max(n_samples, 8)" in r.json()["error"]


@pytest.mark.parametrize(("text", "key"), [
    ('{"inputs": [[0.5, -1, 2, 0.1]], "seed": 1, "seed": 2}', "seed"),
    ('{"inputs": [[9, 9, 9, 9]], "n_samples": 5, "inputs": [[0.5, -1, 2, 0.1]]}', "inputs"),
    ('{"inputs": [[0.5, -1, 2, 0.1]], "mode": "mc", "\\u006dode": "deterministic"}', "mode"),
])
def test_repeated_json_keys_are_refused(client, text, key):
    """JSON parsers keep the last of repeated keys; a request that says two things is refused instead."""
    r = post(client, text)
    assert r.status_code == 400 and r.json()["field"] == key and "more than once" in r.json()["error"]
    quoted = post(client, '{"inputs": [[0.5, -1, 2, 0.1]], "model": "x\\": 1, \\"model\\": 2"}').json()  # one key
    assert quoted["field"] == "model" and "more than once" not in quoted["error"]  # an unknown model, not a repeat


def test_docs_page_has_no_third_party_validator(models):
    page = TestClient(create_app(lambda: SimpleNamespace(config=ServiceConfig(docs=True)))).get("/docs")
    assert page.status_code == 200 and "validatorUrl: null" in page.text

