"""The client: in-process against the routes (httpx's ASGI and mock transports) for splitting, wire formats,
errors and retries; against a real `bentoml serve` for what needs one (a restart, the blocking client end to end)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from mcdrop.client import APIError, AsyncClient, Client, RequestTimeout, UnavailableError
from mcdrop.schemas import Limits, PredictResponse
from mcdrop.service.app import create_app
from mcdrop.serving.config import ServiceConfig
from mcdrop.serving.predictor import Predictor
from mcdrop.serving.scheduler import Scheduler
from mcdrop.wire import NPY, decode_npy
from tests.server import free_port, running_server
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_outputs_close, assert_probabilities_close

MAX_ROWS = 8
LIMITS = Limits(max_rows=MAX_ROWS, max_samples=500, max_body_bytes=64 * 1024)
X = np.random.default_rng(0).normal(size=(30, 4))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def local(models):
    return Predictor([str(models["tiny-cls"]), str(models["tiny-reg"])])


@pytest.fixture(scope="module")
def app(models):
    predictor = Predictor([str(models["tiny-cls"]), str(models["tiny-reg"])], limits=LIMITS)
    state = SimpleNamespace(config=ServiceConfig(limits=LIMITS), predictor=predictor, observe=lambda *a: None,
                            scheduler=Scheduler(predictor, max_rows=MAX_ROWS))
    yield create_app(lambda: state)
    state.scheduler.close()


def run(coro):
    return asyncio.run(coro)


def asgi_client(app, **kw) -> AsyncClient:
    return AsyncClient("http://127.0.0.1:3000", transport=httpx.ASGITransport(app=app), **kw)


def test_import_needs_neither_torch_nor_bentoml():
    code = "import sys, mcdrop, mcdrop.client; print(sorted(m for m in ('torch', 'bentoml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", ["numpy", "list", "tensor"])
def test_inputs_of_every_kind_give_the_local_answer(app, local, kind):
    inputs = {"numpy": X[:5], "list": X[:5].tolist(), "tensor": torch.tensor(X[:5])}[kind]

    async def go():
        async with asgi_client(app) as client:
            return await client.predict(inputs, n_samples=20, seed=7)

    got = run(go())
    want = local.predict_array(X[:5], n_samples=20, seed=7)
    assert got.probabilities.shape == (5, 3) and got.class_names == ["a", "b", "c"]
    assert_probabilities_close(got.probabilities, want.probabilities)
    assert_probabilities_close(got.column("mutual_information"), want.column("mutual_information"))
    assert got.predictions[2].class_name == ["a", "b", "c"][int(want.predicted_class[2])]


def test_large_input_is_split_and_reassembled_in_order(app, local):
    """30 rows > max_rows 8: four requests with row offsets and one seed, one answer equal to one local call."""
    async def go():
        async with asgi_client(app) as client:
            return (await client.predict(X, n_samples=30, seed=11, return_samples=True),
                    await client.predict(X[:, :3], model="tiny-reg", n_samples=30, seed=11),
                    await client.predict(X, n_samples=5))

    got, regression, unseeded = run(go())
    want = local.predict_array(X, n_samples=30, seed=11, return_samples=True)
    assert_probabilities_close(got.probabilities, want.probabilities)
    assert_outputs_close(got.samples, want.samples)
    assert_outputs_close(regression.mean, local.predict_array(X[:, :3], model="tiny-reg", n_samples=30, seed=11).mean)
    assert len(unseeded) == 30 and unseeded.seed is not None  # one seed drawn for all slices
    assert_probabilities_close(unseeded.probabilities, local.predict_array(X, n_samples=5, seed=unseeded.seed).probabilities)


def recording(app, seen: list[httpx.Request]) -> httpx.AsyncBaseTransport:
    inner = httpx.ASGITransport(app=app)

    class Recording(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await request.aread()
            seen.append(request)
            return await inner.handle_async_request(request)

    return Recording()


def test_arrays_travel_binary_and_lists_as_json(app):
    seen: list[httpx.Request] = []

    async def go(**kw):
        async with AsyncClient("http://t", transport=recording(app, seen), **kw) as client:
            await client.predict(X[:3].astype(np.float32), n_samples=4, seed=1, coverage=None)
            await client.predict(X[:3].tolist(), n_samples=4, seed=1)

    run(go())
    binary, plain = [r for r in seen if r.url.path == "/predict"]
    assert binary.headers["content-type"] == NPY and binary.url.params["n_samples"] == "4"
    np.testing.assert_array_equal(decode_npy(binary.content), X[:3].astype(np.float32))
    assert plain.headers["content-type"] == "application/json" and json.loads(plain.content)["seed"] == 1
    seen.clear()
    run(go(wire="json"))
    assert {r.headers["content-type"] for r in seen if r.url.path == "/predict"} == {"application/json"}


def test_slices_also_respect_the_body_limit():
    """Slices whose body would exceed max_body_bytes are halved until they fit; offsets stay contiguous and the
    float32 values survive the 9-digit JSON encoding exactly."""
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        n = len(body["inputs"])
        reply = {"model": "m", "model_version": "1", "task": "homoscedastic", "mode": "mc", "seed": body["seed"],
                 "predictions": [{"mean": 0.0, "variance": 1.0, "std": 1.0, "epistemic_variance": 0.0,
                                  "aleatoric_variance": 1.0, "interval_low": -1.0, "interval_high": 1.0, "level": 0.95,
                                  "mean_stderr": 0.0, "n_samples": 2}] * n}
        return httpx.Response(200, json=reply)

    with Client("http://t", max_rows=30, max_body_bytes=1024, wire="json", transport=httpx.MockTransport(handler)) as c:
        answer = c.predict(X, seed=2)
    assert len(bodies) >= 2 and max(len(json.dumps(b)) for b in bodies) <= 1100 and len(answer) == 30
    assert [b.get("row_offset", 0) for b in bodies] == list(np.cumsum([0] + [len(b["inputs"]) for b in bodies[:-1]]))
    assert {b["seed"] for b in bodies} == {2}
    sent = np.concatenate([np.asarray(b["inputs"], dtype=np.float64) for b in bodies]).astype(np.float32)
    np.testing.assert_array_equal(sent, X.astype(np.float32))


def test_bad_inputs_and_options_fail_before_any_request():
    calls = []
    with Client("http://t", max_rows=8, transport=httpx.MockTransport(lambda r: calls.append(r))) as client:
        with pytest.raises(ValueError, match="mode"):
            client.predict(X[:2], mode="bayes")
        with pytest.raises(ValueError, match="at least one row"):
            client.predict([], n_samples=3)
        with pytest.raises(ValueError, match=r"inputs\[1\]\[0\] is nan"):
            client.predict([[0.0] * 4, [np.nan, 0, 0, 0]])
        with pytest.raises(ValueError, match="expected a number, but got a string"):
            client.predict([["a", 0.0]])
    assert calls == []


@pytest.mark.parametrize(
    ("inputs", "options", "status", "field"),
    [
        (X[:2, :3], {}, 400, "inputs"),
        (X[:2], {"model": "nope"}, 404, "model"),
        (X[:2], {"n_samples": 501}, 400, "n_samples"),
        (X[:2], {"coverage": 0.9}, 400, "coverage"),
    ],
)
def test_server_refusals_raise_api_errors_with_the_field(app, inputs, options, status, field):
    async def go():
        async with asgi_client(app) as client:
            await client.predict(inputs, **options)

    with pytest.raises(APIError) as err:
        run(go())
    assert err.value.status == status and err.value.field == field and err.value.message


def scripted(script: list[int], seen: list[int], delay: float = 0.0) -> httpx.MockTransport:
    """Answers POSTs by ``script`` (status codes); 200s carry a valid one-row response."""
    body = {"model": "m", "model_version": "1", "task": "homoscedastic", "mode": "deterministic", "seed": None,
            "predictions": [{"mean": 1.0, "variance": 1.0, "std": 1.0, "epistemic_variance": None,
                             "aleatoric_variance": 1.0, "interval_low": 0.0, "interval_high": 2.0, "level": 0.95,
                             "mean_stderr": None, "n_samples": 1}]}

    def handler(request: httpx.Request) -> httpx.Response:
        status = script[min(len(seen), len(script) - 1)]
        seen.append(status)
        if delay:
            raise httpx.ReadTimeout("slow", request=request)
        if status == 0:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(status, json=body if status == 200 else {"error": "busy"})

    return httpx.MockTransport(handler)


def test_503_and_connection_errors_are_retried_then_succeed():
    seen: list[int] = []
    with Client("http://t", retries=3, backoff=0.01, max_rows=10, transport=scripted([503, 0, 200], seen)) as client:
        assert client.predict([[1.0]], mode="deterministic").mean.tolist() == [1.0]
    assert seen == [503, 0, 200]


def test_503_for_ever_gives_unavailable():
    seen: list[int] = []
    with (
        Client("http://t", retries=2, backoff=0.01, max_rows=10, transport=scripted([503], seen)) as client,
        pytest.raises(UnavailableError, match="HTTP 503 after 3 attempts: busy"),
    ):
        client.predict([[1.0]], mode="deterministic")
    assert len(seen) == 3


def test_timeout_is_raised_not_retried():
    seen: list[int] = []
    with (
        Client("http://t", timeout=0.3, retries=3, max_rows=10, transport=scripted([200], seen, delay=1)) as client,
        pytest.raises(RequestTimeout, match=r"0\.3 s"),
    ):
        client.predict([[1.0]], mode="deterministic")
    assert len(seen) == 1


def test_api_key_is_sent_as_a_bearer_token():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": "no", "field": "authorization"})

    with Client("http://t", api_key="k" * 20, max_rows=10, transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(APIError) as err:
        client.predict([[1.0]])
    assert seen[0].headers["authorization"] == "Bearer " + "k" * 20 and err.value.field == "authorization"


def test_result_round_trips_through_the_typed_response(app):
    async def go():
        async with asgi_client(app) as client:
            return await client.predict(X[:4].tolist(), n_samples=6, seed=3)

    result = run(go())
    response = result.response()
    assert isinstance(response, PredictResponse) and len(response.predictions) == 4
    again = PredictResponse.model_validate_json(response.model_dump_json())
    assert again.predictions[1].probabilities == response.predictions[1].probabilities


# ------------------------------------------------------------------------------------------ a real server


@pytest.mark.integration
@pytest.mark.slow
def test_blocking_client_and_a_restarted_server(models, local):
    """Against a real server: the blocking client end to end (binary and JSON), then a restart on the same port
    that a retrying call waits through."""
    env = {"MCDROP_SERVE_MODELS": f"{models['tiny-cls']},{models['tiny-reg']}", "MCDROP_MAX_ROWS": str(MAX_ROWS)}
    port = free_port()
    client = Client(f"http://127.0.0.1:{port}", retries=7, backoff=0.5)
    with running_server(env, port=port):
        assert client.health() and client.models().default == "tiny-cls"
        before = client.predict(X, n_samples=5, seed=1)
        as_json = client.predict(X.tolist(), n_samples=5, seed=1)
    assert_probabilities_close(before.probabilities, local.predict_array(X, n_samples=5, seed=1).probabilities)
    assert_probabilities_close(as_json.probabilities, before.probabilities)
    box: dict[str, object] = {}

    def call() -> None:
        try:
            box["answer"] = client.predict(X[:3], n_samples=5, seed=1)
        except Exception as err:  # reported below
            box["error"] = err

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # still retrying: the server is down
    with running_server(env, port=port):
        thread.join(120)
    client.close()
    assert "error" not in box, box.get("error")
    np.testing.assert_array_equal(box["answer"].probabilities, before.probabilities[:3])  # type: ignore[union-attr]


def test_no_server_gives_unavailable_after_bounded_retries():
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, max_rows=4) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="3 attempts"):
            client.predict(X[:1])
    assert time.monotonic() - start < 10
