"""The client against a real `bentoml serve` (and, for 503s and timeouts, a real stub HTTP server)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from mcdrop.client import APIError, AsyncClient, Client, RequestTimeout, UnavailableError
from mcdrop.predictor import Predictor
from tests.server import free_port, running_server
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_outputs_close, assert_probabilities_close

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_ROWS = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def server_env(models) -> dict[str, str]:
    return {"MCDROP_SERVE_MODELS": f"{models['tiny-cls']},{models['tiny-reg']}", "MCDROP_MAX_ROWS": str(MAX_ROWS),
            "MCDROP_MAX_SAMPLES": "500"}


@pytest.fixture(scope="module")
def url(models):
    with running_server(server_env(models)) as base:
        yield base


@pytest.fixture(scope="module")
def local(models):
    return Predictor([str(models["tiny-cls"]), str(models["tiny-reg"])])


X = np.random.default_rng(0).normal(size=(30, 4))


def test_import_needs_neither_torch_nor_bentoml():
    code = "import sys, mcdrop.client; print(sorted(m for m in ('torch', 'bentoml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_models_and_health(url):
    with Client(url) as client:
        assert client.health()
        served = client.models()
    assert served.default == "tiny-cls" and served.limits.max_rows == MAX_ROWS
    assert served.card("tiny-reg").tau == 4.0
    with Client(f"http://127.0.0.1:{free_port()}", retries=0) as client:
        assert not client.health()


@pytest.mark.parametrize("kind", ["numpy", "list", "tensor"])
def test_inputs_of_every_kind_give_the_local_answer(url, local, kind):
    inputs = {"numpy": X[:5], "list": X[:5].tolist(), "tensor": torch.tensor(X[:5])}[kind]
    with Client(url) as client:
        got = client.predict(inputs, n_samples=20, seed=7)
    want = local.predict_array(X[:5], n_samples=20, seed=7)
    assert got.probabilities.shape == (5, 3)
    assert_probabilities_close(got.probabilities, want.probabilities)
    assert_probabilities_close(got.column("mutual_information"), want.column("mutual_information"))


def test_large_input_is_split_and_reassembled_in_order(url, local):
    """30 rows > max_rows 8: four requests with row offsets, one answer equal to one local call."""
    with Client(url) as client:
        got = client.predict(X, n_samples=30, seed=11, return_samples=True)
        regression = client.predict(X[:, :3], model="tiny-reg", n_samples=30, seed=11)
        unseeded = client.predict(X, n_samples=5)
    want = local.predict_array(X, n_samples=30, seed=11, return_samples=True)
    assert_probabilities_close(got.probabilities, want.probabilities)
    assert_outputs_close(np.asarray(got.samples), np.asarray(want.samples))
    assert_outputs_close(regression.mean, local.predict_array(X[:, :3], model="tiny-reg", n_samples=30, seed=11).mean)
    assert len(unseeded.predictions) == 30 and unseeded.seed is not None  # one seed drawn for all slices


def test_slices_also_respect_the_body_limit():
    """Slices whose JSON would exceed max_body_bytes are halved until they fit; offsets stay contiguous and
    the float32 values survive the 9-digit encoding exactly."""
    with Client("http://127.0.0.1:9", max_rows=30, max_body_bytes=1024) as client:  # 30 rows: about 1.5 kB
        slices = list(client._requests(X, client.limits(), {"seed": 2}))
    bodies = [json.loads(body) for _, body in slices]
    assert len(slices) >= 2 and max(len(body) for _, body in slices) <= 1024
    assert [b["row_offset"] for b in bodies] == list(np.cumsum([0] + [n for n, _ in slices[:-1]]))
    assert {b["seed"] for b in bodies} == {2}
    sent = np.concatenate([np.asarray(b["inputs"], dtype=np.float64) for b in bodies]).astype(np.float32)
    np.testing.assert_array_equal(sent, X.astype(np.float32))


def test_nan_inputs_fail_before_any_request(url):
    with Client(url) as client, pytest.raises(ValueError, match=r"inputs\[1\] holds NaN"):
        client.predict([[0.0] * 4, [np.nan, 0, 0, 0]])


def test_row_offset_continues_a_split_file(url, local):
    with Client(url) as client:
        tail = client.predict(X[10:], n_samples=10, seed=3, row_offset=10)
    assert_probabilities_close(tail.probabilities, local.predict_array(X, n_samples=10, seed=3).probabilities[10:])


@pytest.mark.parametrize(
    ("inputs", "options", "status", "field"),
    [
        (X[:2, :3], {}, 400, "inputs"),  # wrong width
        (X[:2], {"model": "nope"}, 404, "model"),
        (X[:2], {"n_samples": 501}, 400, "n_samples"),
        (X[:2], {"max_samples": 900, "tolerance": 0.1}, 400, "max_samples"),
    ],
)
def test_server_refusals_raise_api_errors_with_the_field(url, inputs, options, status, field):
    with Client(url) as client, pytest.raises(APIError) as err:
        client.predict(inputs, **options)
    assert err.value.status == status and err.value.field == field and err.value.message


def test_bad_options_fail_before_any_request(url):
    with Client(url) as client:
        with pytest.raises(ValueError, match="mode"):
            client.predict(X[:2], mode="bayes")
        with pytest.raises(ValueError, match="rows"):
            client.predict([], n_samples=3)


def test_retries_until_a_restarted_server_answers(models):
    """Stop the server, call, restart it on the same port: the call waits through the outage and succeeds."""
    port = free_port()
    box: dict[str, object] = {}
    client = Client(f"http://127.0.0.1:{port}", retries=7, backoff=0.5)
    with running_server(server_env(models), port=port):
        before = client.predict(X[:3], n_samples=5, seed=1)

    def call() -> None:
        try:
            box["answer"] = client.predict(X[:3], n_samples=5, seed=1)
        except Exception as err:  # reported below
            box["error"] = err

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # still retrying: the server is down
    with running_server(server_env(models), port=port):
        thread.join(120)
    client.close()
    assert "error" not in box, box.get("error")
    np.testing.assert_array_equal(box["answer"].probabilities, before.probabilities)  # type: ignore[union-attr]


def test_no_server_gives_unavailable_after_bounded_retries():
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, max_rows=4) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="3 attempts"):
            client.predict(X[:1])
    assert time.monotonic() - start < 10


@contextmanager
def stub_server(script: list[tuple[int, float]]) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server answering POSTs by ``script`` (status, delay); 200s carry a valid response."""
    body = json.dumps({"model": "m", "model_version": "1", "task": "homoscedastic", "mode": "deterministic",
                       "seed": None, "predictions": [{"mean": 1.0, "variance": 1.0, "std": 1.0,
                       "epistemic_variance": None, "aleatoric_variance": 1.0, "interval_low": 0.0,
                       "interval_high": 2.0, "level": 0.95, "mean_stderr": None, "n_samples": 1}]}).encode()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status, delay = script[min(len(seen), len(script) - 1)]
            seen.append(str(status))
            time.sleep(delay)
            payload = body if status == 200 else b'{"error": "busy"}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the timeout test hangs up mid-answer: a broken pipe here is expected

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_503_is_retried_then_succeeds():
    with stub_server([(503, 0), (503, 0), (200, 0)]) as (url, seen), \
            Client(url, retries=3, backoff=0.01, max_rows=10) as client:
        assert client.predict([[1.0]], mode="deterministic").mean.tolist() == [1.0]
    assert seen == ["503", "503", "200"]


def test_503_for_ever_gives_unavailable():
    with (
        stub_server([(503, 0)]) as (url, seen),
        Client(url, retries=2, backoff=0.01, max_rows=10) as client,
        pytest.raises(UnavailableError, match="HTTP 503 after 3 attempts: busy"),
    ):
        client.predict([[1.0]], mode="deterministic")
    assert len(seen) == 3


def test_timeout_is_raised_not_retried():
    with (
        stub_server([(200, 2.0)]) as (url, seen),
        Client(url, timeout=0.3, retries=3, max_rows=10) as client,
        pytest.raises(RequestTimeout, match=r"0\.3 s"),
    ):
        client.predict([[1.0]], mode="deterministic")
    assert len(seen) == 1


def test_async_client_matches_the_blocking_one(url):
    async def go():
        async with AsyncClient(url, concurrency=3) as client:
            assert await client.health()
            assert (await client.models()).default == "tiny-cls"
            answer = await client.predict(X, n_samples=25, seed=5)
            with pytest.raises(APIError) as err:
                await client.predict(X[:1], model="nope")
            return answer, err.value

    answer, error = asyncio.run(go())
    with Client(url) as client:
        blocking = client.predict(X, n_samples=25, seed=5)
    np.testing.assert_array_equal(answer.probabilities, blocking.probabilities)
    assert error.status == 404 and error.field == "model"
