"""POST /acquire: in-process (routes and the async client over ASGI) and against a real `bentoml serve` with the
blocking client."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from mcdrop.client import APIError, AsyncClient, Client
from mcdrop.schemas import Limits
from mcdrop.service.app import create_app
from mcdrop.serving.config import ServiceConfig
from mcdrop.serving.predictor import Predictor
from mcdrop.serving.scheduler import Scheduler
from mcdrop.uncertainty.acquisition import acquire
from tests.server import running_server
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_probabilities_close

POOL = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
LIMITS = Limits(max_rows=8, max_samples=500, max_cost=40 * 64 * 112 + 1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def app(models):
    predictor = Predictor([str(models["tiny-cls"]), str(models["tiny-reg"])], limits=LIMITS)
    state = SimpleNamespace(config=ServiceConfig(limits=LIMITS), predictor=predictor, observe=lambda *a: None,
                            scheduler=Scheduler(predictor))
    yield create_app(lambda: state)
    state.scheduler.close()


def post(client, body) -> httpx.Response:
    return client.post("/acquire", content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize("method", ["bald", "batchbald", "entropy", "margin", "random"])
def test_answer_equals_the_library_on_consistent_samples(app, models, method):
    r = post(TestClient(app), {"inputs": POOL.tolist(), "k": 5, "method": method, "n_samples": 32, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 3 and body["method"] == method and len(body["indices"]) == 5
    engine = Predictor([str(models["tiny-cls"])]).served().engine
    probs = engine.sample(torch.from_numpy(POOL), 32, seed=3, consistent=True).softmax(-1)
    want = acquire(probs, 5, method, seed=3)
    assert body["indices"] == want.indices.tolist()
    assert_probabilities_close(body["scores"], want.scores.numpy())


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"inputs": POOL.tolist(), "k": 41}, 400, "k"),
    ({"inputs": POOL.tolist(), "k": 2, "method": "bold"}, 400, "method"),
    ({"inputs": POOL.tolist(), "k": 2, "n_samples": 501}, 400, "n_samples"),
    ({"inputs": POOL.tolist(), "k": 2, "n_samples": 65}, 413, "n_samples"),  # rows x passes x cost > MCDROP_MAX_COST
    ({"inputs": POOL.tolist(), "k": 2, "model": "nope"}, 404, "model"),
    ({"inputs": POOL.tolist(), "k": 2, "model": "tiny-reg"}, 400, "model"),
    ({"inputs": POOL[:, :3].tolist(), "k": 2}, 400, "inputs"),
    ({"inputs": [[1.0, "x", 0.0, 0.0]], "k": 1}, 400, "inputs"),
])
def test_bad_requests_get_a_4xx_naming_the_field(app, body, status, field):
    r = post(TestClient(app), body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_random_needs_no_passes_so_any_n_samples_fits_the_budget(app):
    r = post(TestClient(app), {"inputs": POOL.tolist(), "k": 3, "method": "random", "n_samples": 400, "seed": 1})
    assert r.status_code == 200, r.text


def test_async_client_over_asgi(app):
    async def go():
        async with AsyncClient("http://127.0.0.1:3000", transport=httpx.ASGITransport(app=app)) as c:
            return await c.acquire(POOL, 4, method="batchbald", n_samples=16, seed=2)

    got = asyncio.run(go())
    assert len(set(got.indices)) == 4 and got.seed == 2
    assert all(b >= a - 1e-9 for a, b in zip(got.scores, got.scores[1:], strict=False))  # a batch's value grows


def test_client_checks_before_sending():
    with pytest.raises(ValueError, match="k"), Client("http://127.0.0.1:9") as c:
        c.acquire(POOL, 0)


@pytest.mark.integration
def test_real_server_with_the_blocking_client(models):
    env = {"MCDROP_SERVE_MODELS": f"{models['tiny-cls']},{models['tiny-reg']}", "MCDROP_MAX_COST": str(40 * 64 * 112 + 1)}
    with running_server(env) as url, Client(url) as c:
        got = c.acquire(POOL, 6, method="bald", n_samples=32, seed=9)
        again = c.acquire(POOL, 6, method="bald", n_samples=32, seed=9)
        assert got.indices == again.indices and got.seed == 9 and len(got.indices) == 6
        with pytest.raises(APIError) as err:
            c.acquire(POOL, 2, n_samples=65)
        assert err.value.status == 413 and err.value.field == "n_samples"
        drawn = c.acquire(POOL, 2, method="entropy")
        assert isinstance(drawn.seed, int)


@pytest.mark.integration
def test_the_servers_guard_checks_acquire_bodies_as_predict_bodies(models):
    """An /acquire body is checked by the guard as a /predict body is: a stalled body gets 408 after
    MCDROP_BODY_TIMEOUT (the route alone would wait for it), an oversized one 413 before it is read whole."""
    import socket
    from urllib.parse import urlsplit

    env = {"MCDROP_SERVE_MODELS": str(models["tiny-cls"]), "MCDROP_MAX_BODY_BYTES": "1024", "MCDROP_BODY_TIMEOUT": "0.5"}
    with running_server(env) as url:
        host = urlsplit(url)
        with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
            sock.sendall(b"POST /acquire HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")  # then nothing
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
        big = httpx.post(f"{url}/acquire", content=b"[" + b"0," * 2000 + b"0]",
                         headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["field"] == "body"
