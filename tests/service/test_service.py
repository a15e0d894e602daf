"""The service over real HTTP: a `bentoml serve` subprocess on a loopback port."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcdrop.predictor import Predictor
from mcdrop.schemas import PredictRequest, PredictResponse
from tests.server import running_server
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_probabilities_close

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_ROWS, MAX_SAMPLES, MAX_BODY = 8, 500, 64 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def url(models):
    env = {
        "MCDROP_SERVE_MODELS": f"{models['tiny-cls']},{models['tiny-reg']}",
        "MCDROP_MAX_ROWS": str(MAX_ROWS),
        "MCDROP_MAX_SAMPLES": str(MAX_SAMPLES),
        "MCDROP_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with running_server(env) as base:
        yield base


def post(url: str, body: dict | str, **kw) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{url}/predict", content=content, headers={"content-type": "application/json"}, timeout=30, **kw)


ROW = [0.5, -1.0, 2.0, 0.1]


def test_health_and_metrics(url):
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    post(url, {"inputs": [ROW], "n_samples": 7, "seed": 1})
    metrics = httpx.get(f"{url}/metrics").text
    assert 'mcdrop_mc_samples_total{model="tiny-cls"}' in metrics
    assert 'mcdrop_prediction_latency_seconds_bucket{le="0.005",mode="mc"}' in metrics or 'mode="mc"' in metrics


def test_models_lists_cards(url):
    body = httpx.get(f"{url}/models").json()
    assert body["default"] == "tiny-cls"
    assert [m["name"] for m in body["models"]] == ["tiny-cls", "tiny-reg"]
    assert body["limits"]["max_rows"] == MAX_ROWS
    assert len(body["models"][0]["weights_sha256"]) == 64


def test_mc_classification_response(url):
    r = post(url, {"inputs": [ROW, ROW], "n_samples": 30, "seed": 3, "return_samples": True})
    assert r.status_code == 200, r.text
    body = PredictResponse.model_validate(r.json())
    assert body.mode == "mc" and body.seed == 3 and body.model == "tiny-cls" and body.model_version == "1"
    p = body.predictions[0]
    assert abs(sum(p.probabilities) - 1) < 1e-5 and p.n_samples == 30 and p.class_name in {"a", "b", "c"}
    assert p.mutual_information is not None and p.mutual_information >= 0 and p.variation_ratio is not None
    assert np.asarray(body.samples).shape == (30, 2, 3)


def test_deterministic_mode_fills_only_defined_fields(url):
    body = post(url, {"inputs": [ROW], "mode": "deterministic"}).json()
    p = body["predictions"][0]
    assert body["seed"] is None and p["n_samples"] == 1
    assert p["mutual_information"] is None and p["expected_entropy"] is None and p["predictive_entropy"] > 0


def test_regression_by_name_with_interval(url):
    body = post(url, {"inputs": [[0.1, 0.2, 0.3]], "model": "tiny-reg", "n_samples": 40, "seed": 0, "level": 0.8}).json()
    p = body["predictions"][0]
    assert body["task"] == "homoscedastic" and p["aleatoric_variance"] == pytest.approx(0.25)
    assert p["interval_low"] < p["mean"] < p["interval_high"] and p["level"] == 0.8
    assert p["variance"] == pytest.approx(p["epistemic_variance"] + p["aleatoric_variance"], rel=1e-5)


def test_adaptive_reports_n_used(url):
    p = post(url, {"inputs": [ROW], "n_samples": 8, "tolerance": 0.02, "max_samples": 400, "seed": 1}).json()
    n = p["predictions"][0]["n_samples"]
    assert 8 <= n <= 400
    assert max(p["predictions"][0]["probability_stderr"]) <= 0.02 or n == 400


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"inputs": [[1.0, 2.0]]}, 400, "inputs"),
        ('{"inputs": [[1.0, 2.0, NaN, 4.0]]}', 400, "inputs"),
        ('{"inputs": [[1.0, 2.0, Infinity, 4.0]]}', 400, "inputs"),
        ({"inputs": [[1.0, "x", 3.0, 4.0]]}, 400, "inputs"),
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": [ROW] * (MAX_ROWS + 1)}, 413, "inputs"),
        ({"inputs": [ROW], "n_samples": 0}, 400, "n_samples"),
        ({"inputs": [ROW], "n_samples": MAX_SAMPLES + 1}, 400, "n_samples"),
        ({"inputs": [ROW], "model": "nope"}, 404, "model"),
        ({"inputs": [ROW], "mode": "bayes"}, 400, "mode"),
        ({"inputs": [ROW], "seed": -1}, 400, "seed"),
        ({"inputs": [ROW], "level": 1.0}, 400, "level"),
        ({"inputs": [ROW], "surprise": 1}, 400, "surprise"),
        ('{"inputs": [[1.0, 2.0', 400, "body"),
        ("[1, 2, 3]", 400, "body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(url, body, status, field):
    r = post(url, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field, err  # the same shape for the service's checks and BentoML's validation
    assert err["error"] and "validation error for" not in err["error"]


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "multipart/form-data",
                                          "application/x-www-form-urlencoded"])
def test_form_bodies_are_415_naming_the_content_type(url, content_type):
    """A malformed multipart body made BentoML answer 500; `curl -d` without a header sends a form."""
    r = httpx.post(f"{url}/predict", content=json.dumps({"inputs": [ROW]}), headers={"content-type": content_type})
    assert r.status_code == 415 and r.json()["field"] == "content-type" and "application/json" in r.json()["error"]


def test_openapi_document_uses_openapi_30_bounds(url):
    """Exclusive bounds in the OpenAPI 3.0 form (a boolean beside minimum/maximum), so 3.0 tools accept it."""
    doc = httpx.get(f"{url}/docs.json").json()
    level = doc["components"]["schemas"]["PredictRequestIODescriptor"]["properties"]["level"]
    assert (level["minimum"], level["maximum"], level["exclusiveMinimum"], level["exclusiveMaximum"]) == (0, 1, True, True)


def test_inputs_beyond_float32_name_the_bound(url):
    r = post(url, {"inputs": [[0.5, 1e300, 0.0, 0.0]]})
    assert r.status_code == 400 and r.json()["field"] == "inputs"
    assert r.json()["error"].startswith("inputs[0][1]: Input should be less than or equal to 3.4028235e+38")


ABSENT = object()
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                 st.text(max_size=5), st.lists(st.integers(), max_size=2))


def _field(draw: st.DrawFn, valid: st.SearchStrategy, *edges: object) -> object:
    """A field's value: from ``valid`` 24 times in 28, else an edge value (out of range), of the wrong type,
    or absent."""
    pick = draw(st.integers(0, 27))
    if pick < 24 or (pick == 24 and not edges):
        return draw(valid)
    return draw(st.sampled_from(edges)) if pick == 24 else draw(JUNK) if pick < 27 else ABSENT


CLEAN = st.one_of(st.floats(-10, 10), st.integers(-5, 5))
DIRTY = st.one_of(st.floats(-10, 10), st.floats(allow_nan=False), st.text(max_size=2))


@st.composite
def bodies(draw: st.DrawFn) -> dict:
    """Request bodies, mostly well formed for the chosen model; each field sometimes out of range, of the
    wrong type or absent."""
    model = _field(draw, st.sampled_from(["tiny-cls", "tiny-reg", "nope"]))
    width = 3 if model == "tiny-reg" else 4
    width = draw(st.sampled_from([width] * 8 + [2, 5]))
    cells = draw(st.sampled_from([CLEAN] * 4 + [DIRTY]))
    n_rows = draw(st.sampled_from([*range(1, MAX_ROWS + 1)] * 2 + [0, MAX_ROWS + 1]))  # 0 and too many: rare
    rows = st.lists(st.lists(cells, min_size=width, max_size=width), min_size=n_rows, max_size=n_rows)
    body = {
        "inputs": _field(draw, rows),
        "model": model,
        "mode": _field(draw, st.sampled_from(["mc", "deterministic"])),
        "n_samples": _field(draw, st.integers(1, 60), 0, MAX_SAMPLES, MAX_SAMPLES + 1),
        "seed": _field(draw, st.integers(0, 2**63 - 1), -1, 2**63),
        "tolerance": _field(draw, st.floats(0.01, 1), 0.0),
        "max_samples": _field(draw, st.integers(1, MAX_SAMPLES + 1)),
        "level": _field(draw, st.floats(0.01, 0.99), 0.0, 1.0),
        "return_samples": _field(draw, st.booleans()),
        "row_offset": _field(draw, st.integers(0, 2**31 - MAX_ROWS), -1, 2**31),
    }
    return {k: v for k, v in body.items() if v is not ABSENT}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=bodies())
def test_fuzzed_requests_get_an_answer_or_a_4xx_never_a_5xx(url, body):
    """Any mix of valid, out-of-range and wrongly typed fields: 200 with the response schema, or a 4xx in
    the error shape naming a field."""
    r = post(url, body)
    event(f"status {r.status_code} {r.json().get('field') if r.status_code != 200 else ''}")
    if r.status_code == 200:
        PredictResponse.model_validate(r.json())
    else:
        assert r.status_code in (400, 404, 413, 422), r.text
        assert r.json()["error"] and r.json()["field"], r.text


def test_oversized_body_is_413(url):
    r = post(url, {"inputs": [[0.123456789] * 4] * 2000})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_server_survives_bad_input(url):
    for body in ('{"inputs": [[1.0, 2.0', {"inputs": [[1.0]]}, {"inputs": [ROW], "n_samples": 10**9}):
        assert 400 <= post(url, body).status_code < 500
    assert post(url, {"inputs": [ROW]}).status_code == 200


def test_seeded_answer_same_alone_and_under_concurrent_load(url):
    target = {"inputs": [ROW, [1.0, 0.0, -1.0, 2.0]], "n_samples": 50, "seed": 42, "row_offset": 5}
    alone = post(url, target).json()

    def other(i: int) -> httpx.Response:
        rng = np.random.default_rng(i)
        return post(
            url,
            {
                "inputs": rng.normal(size=(1 + i % 3, 4)).tolist(),
                "n_samples": 50 if i % 2 else 20,
                "seed": i,
                "mode": "deterministic" if i % 5 == 0 else "mc",
            },
        )

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(other, i) for i in range(24)]
        mine = [pool.submit(post, url, target) for _ in range(4)]
        assert all(f.result().status_code == 200 for f in futures)
        answers = [f.result().json() for f in mine]
    for answer in answers:
        for a, b in zip(answer["predictions"], alone["predictions"], strict=True):
            assert_probabilities_close(a["probabilities"], b["probabilities"])
            assert_probabilities_close(a["mutual_information"], b["mutual_information"])


def test_http_equals_library_predictor(url, models):
    request = {"inputs": [ROW, [0.0, 1.0, 0.0, 1.0]], "n_samples": 25, "seed": 9}
    http = post(url, request).json()
    local = Predictor([str(models["tiny-cls"])]).predict(PredictRequest(**request))
    for a, b in zip(http["predictions"], local.predictions, strict=True):
        assert_probabilities_close(a["probabilities"], b.probabilities)
        assert a["predicted_class"] == b.predicted_class
