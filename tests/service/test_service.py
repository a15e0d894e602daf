"""The BentoML service: wired in-process (guard, routes, metrics, probes), then what only a real `bentoml serve`
shows (start-up checks, binding, concurrency, slow clients, signals)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from mcdrop.schemas import PredictResponse
from mcdrop.wire import META_HEADER, NPY, decode_result, encode_npy
from tests.server import free_port, running_server
from tests.tiny_models import write_calibrated_model, write_tiny_models
from tests.tolerances import assert_probabilities_close

MAX_ROWS, MAX_SAMPLES, MAX_BODY = 8, 500, 64 * 1024
ROW = [0.5, -1.0, 2.0, 0.1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    return {**write_tiny_models(directory), "tiny-calibrated": write_calibrated_model(directory)}


def service_env(models) -> dict[str, str]:
    served = ",".join(str(models[name]) for name in ("tiny-cls", "tiny-reg", "tiny-calibrated"))
    return {"MCDROP_SERVE_MODELS": served, "MCDROP_MAX_ROWS": str(MAX_ROWS),
            "MCDROP_MAX_SAMPLES": str(MAX_SAMPLES), "MCDROP_MAX_BODY_BYTES": str(MAX_BODY),
            "MCDROP_HEADER_TIMEOUT": "2", "MCDROP_BODY_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def inproc(models, tmp_path_factory):
    """The whole BentoML app in this process (built once: BentoML's metrics are process-wide)."""
    from starlette.testclient import TestClient

    from mcdrop.service.service import MCDrop

    env = {**service_env(models), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prometheus"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with TestClient(MCDrop.to_asgi(), base_url="http://127.0.0.1:3000") as client:
            yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_inprocess_service_is_wired(inproc):
    """Settings read at start-up, the guard in front, the routes behind it, probes and metrics beside them."""
    assert inproc.get("/models").json()["limits"]["max_rows"] == MAX_ROWS
    r = inproc.post("/predict", json={"inputs": [ROW, ROW], "n_samples": 7, "seed": 1})
    assert r.status_code == 200 and PredictResponse.model_validate(r.json()).predictions[0].n_samples == 7
    assert inproc.post("/predict", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert inproc.post("/predict", content=b"x", headers={"content-type": "application/vnd.bentoml+pickle"}
                       ).status_code == 415
    assert inproc.get("/models", headers={"host": "evil.example"}).status_code == 400
    assert inproc.get("/").status_code == 404 and inproc.get("/docs").status_code == 404
    assert inproc.get("/livez").status_code == 200 and inproc.get("/readyz").status_code == 200
    far = [[5.0] * 8] * 3  # far from the blobs the calibrated model saw: abstentions as out_of_distribution
    r = inproc.post("/predict", json={"inputs": far, "model": "tiny-calibrated", "n_samples": 10, "seed": 1})
    assert all(p["abstain_reasons"][0] == "out_of_distribution" for p in r.json()["predictions"])
    metrics = inproc.get("/metrics").text
    for name in ("mcdrop_mc_samples_total", "mcdrop_prediction_latency_seconds", "mcdrop_mutual_information_bucket",
                 "mcdrop_ood_score_bucket", "mcdrop_answers_total"):
        assert name in metrics, name
    assert 'mcdrop_answers_total{model="tiny-cls"} 2.0' in metrics
    assert 'mcdrop_abstentions_total{model="tiny-calibrated",reason="out_of_distribution"} 3.0' in metrics
    assert 'mcdrop_drift_ood_share{model="tiny-calibrated"} 1.0' in metrics  # drift watched per calibrated model
    assert inproc.get("/openapi.json").json()["openapi"] == "3.0.3"


def test_another_service_composes_it_with_bentoml_depends(models, monkeypatch):
    """``bentoml.depends(MCDrop)`` in the same process calls the API methods directly: keyword arguments validated
    by the schema, the typed response back, a refusal raised as the library's error."""
    import asyncio

    import bentoml

    from mcdrop.schemas import PredictRequest
    from mcdrop.service.service import MCDrop
    from mcdrop.serving.errors import PredictError

    for key, value in service_env(models).items():
        monkeypatch.setenv(key, value)

    @bentoml.service
    class Composer:
        mcdrop = bentoml.depends(MCDrop)

    composer = Composer()
    try:
        async def calls() -> PredictResponse:
            answer = await composer.mcdrop.predict(inputs=[ROW, ROW], n_samples=9, seed=4)
            with pytest.raises(PredictError, match="n_samples"):
                await composer.mcdrop.predict(inputs=[ROW], n_samples=MAX_SAMPLES + 1)
            picked = await composer.mcdrop.acquire(inputs=[ROW, [1.0, 0.0, -1.0, 2.0], ROW], k=2, n_samples=6, seed=2)
            assert len(picked.indices) == 2 and picked.seed == 2
            return answer

        answer = asyncio.run(calls())
        want = composer.mcdrop.predictor.predict(PredictRequest(inputs=[ROW, ROW], n_samples=9, seed=4))
        assert isinstance(answer, PredictResponse) and answer.seed == 4
        assert_probabilities_close(answer.probabilities, want.probabilities)
    finally:
        composer.mcdrop.scheduler.close()


# ------------------------------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def url(models):
    with running_server(service_env(models)) as base:
        yield base


def post(url: str, body: dict | str | bytes, **kw) -> httpx.Response:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{url}/predict", content=content, headers={"content-type": "application/json"}, timeout=30, **kw)


@pytest.mark.integration
@pytest.mark.slow
def test_real_server_answers_json_and_binary(url):
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    plain = post(url, {"inputs": x.tolist(), "n_samples": 20, "seed": 5}).json()
    binary = httpx.post(f"{url}/predict?n_samples=20&seed=5", content=encode_npy(x),
                        headers={"content-type": NPY, "accept": NPY}, timeout=30)
    assert binary.headers["content-type"] == NPY
    answer = decode_result(binary.content, binary.headers[META_HEADER])
    assert_probabilities_close(answer.probabilities, [p["probabilities"] for p in plain["predictions"]])


@pytest.mark.integration
@pytest.mark.slow
def test_bentomls_own_clients_call_predict_and_acquire(url):
    """``bentoml.SyncHTTPClient``/``AsyncHTTPClient`` read the service's schema and call the typed API methods, as
    another service's ``bentoml.depends(url=...)`` does: the same answer as mcdrop's own Client for the same seed,
    and a refusal in the service's error shape."""
    import asyncio

    import bentoml

    from mcdrop.client import Client

    rows = [ROW, [1.0, 0.0, -1.0, 2.0]]
    with bentoml.SyncHTTPClient(url) as client:
        assert {"predict", "acquire"} <= set(client.endpoints)
        answer = PredictResponse.model_validate(client.predict(inputs=rows, n_samples=30, seed=11, row_offset=2))
        picked = client.acquire(inputs=rows * 3, k=2, n_samples=8, seed=3)
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            client.predict(inputs=rows, n_samples=MAX_SAMPLES + 1)
    with Client(url) as own:
        want = own.predict(rows, n_samples=30, seed=11, row_offset=2)
    assert answer.seed == 11 and [p.n_samples for p in answer.predictions] == [30, 30]
    assert_probabilities_close(answer.probabilities, want.probabilities)
    assert len(picked["indices"]) == 2 and picked["seed"] == 3
    assert refused.value.error_code == 400 and json.loads(str(refused.value))["field"] == "n_samples"

    async def call() -> dict:
        async with bentoml.AsyncHTTPClient(url) as client:
            return await client.predict(inputs=rows, n_samples=30, seed=11, row_offset=2)

    assert_probabilities_close(PredictResponse.model_validate(asyncio.run(call())).probabilities, want.probabilities)

    from starlette.testclient import TestClient

    from mcdrop.service.service import MCDrop

    @bentoml.service(metrics={"enabled": False})  # BentoML's request metrics are process-wide: the in-process
    class Composer:                                # service of this module registered them already
        mcdrop = bentoml.depends(url=url, on=MCDrop)

        @bentoml.api
        async def probabilities(self, rows: list[list[float]]) -> list[list[float]]:
            answer = await self.mcdrop.predict(inputs=rows, n_samples=30, seed=11, row_offset=2)
            return [p.probabilities for p in answer.predictions]

    with TestClient(Composer.to_asgi()) as composer:
        assert_probabilities_close(composer.post("/probabilities", json={"rows": rows}).json(), want.probabilities)


@pytest.mark.integration
@pytest.mark.slow
def test_real_server_binds_loopback_by_default(url):
    port = int(url.rsplit(":", 1)[1])
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    if not out.strip():
        pytest.skip("ss cannot list the listening socket here")
    local = {line.split()[3].rsplit(":", 1)[0] for line in out.strip().splitlines()}  # LISTEN q q LOCAL PEER
    assert local == {"127.0.0.1"}


@pytest.mark.integration
@pytest.mark.slow
def test_seeded_answer_same_alone_and_under_concurrent_load(url):
    target = {"inputs": [ROW, [1.0, 0.0, -1.0, 2.0]], "n_samples": 50, "seed": 42, "row_offset": 5}
    alone = post(url, target).json()

    def other(i: int) -> httpx.Response:
        rng = np.random.default_rng(i)
        return post(url, {"inputs": rng.normal(size=(1 + i % 3, 4)).tolist(), "n_samples": 50 if i % 2 else 20,
                          "seed": i, "mode": "deterministic" if i % 5 == 0 else "mc"})

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(other, i) for i in range(24)]
        mine = [pool.submit(post, url, target) for _ in range(4)]
        assert all(f.result().status_code == 200 for f in futures)
        answers = [f.result().json() for f in mine]
    for answer in answers:
        for a, b in zip(answer["predictions"], alone["predictions"], strict=True):
            assert_probabilities_close(a["probabilities"], b["probabilities"])
            assert_probabilities_close(a["mutual_information"], b["mutual_information"])


@pytest.mark.integration
@pytest.mark.slow
def test_oversized_bodies_are_413_with_or_without_a_length(url):
    r = post(url, {"inputs": [[0.123456789] * 4] * 2000})
    assert r.status_code == 413 and r.json()["field"] == "body"
    chunks = iter([b'{"inputs": [' + b"[0.1, 0.2, 0.3, 0.4]," * 4000, b"[1, 2, 3, 4]]}"])
    r = httpx.post(f"{url}/predict", content=chunks, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert post(url, {"inputs": [ROW]}).status_code == 200


@pytest.mark.integration
@pytest.mark.slow
def test_silent_and_slow_connections_are_closed(url):
    """A client that sends no headers, or a body shorter than its Content-Length, does not hold a connection."""
    HEADER_TIMEOUT_S = 2.0
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    silent = socket.create_connection((host, port))
    silent.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the headers never end
    lying = socket.create_connection((host, port))
    lying.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"inputs\"")
    start = time.monotonic()
    silent.settimeout(HEADER_TIMEOUT_S + 20)
    assert silent.recv(100) == b""  # closed by the server
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 5
    lying.settimeout(30)
    assert b"408" in lying.recv(1000).split(b"\r\n")[0]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "card", "missing", "kind", "path"])
def test_a_bad_model_stops_the_server_with_one_line(models, tmp_path, damage):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(models["tiny-cls"], bad)
    if damage == "truncated":
        (bad / "weights.safetensors").write_bytes((bad / "weights.safetensors").read_bytes()[:-16])
    elif damage == "card":
        (bad / "card.json").write_text("{not json")
    elif damage == "missing":
        (bad / "weights.safetensors").unlink()
    elif damage == "kind":
        card = json.loads((bad / "card.json").read_text())
        card["architecture"]["kind"] = "transformer"
        (bad / "card.json").write_text(json.dumps(card))
    else:
        bad = tmp_path / "does-not-exist"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mcdrop.cli.main", "serve", "--port", str(free_port()), "--models",
                           str(bad)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    assert proc.returncode != 0 and time.monotonic() - start < 60
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mcdrop: cannot serve")]
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_lets_a_request_in_flight_finish(models):
    import signal
    import threading

    with running_server(service_env(models)) as base:
        result: dict[str, httpx.Response] = {}
        body = {"inputs": [ROW] * MAX_ROWS, "n_samples": MAX_SAMPLES, "tolerance": 1e-9, "max_samples": MAX_SAMPLES}
        thread = threading.Thread(target=lambda: result.setdefault("r", post(base, body)))
        thread.start()
        time.sleep(0.3)
        pids = subprocess.run(["pgrep", "-f", f"--port {base.rsplit(':', 1)[1]}"], capture_output=True, text=True)
        for pid in pids.stdout.split()[:1]:
            os.kill(int(pid), signal.SIGTERM)
        thread.join(60)
    assert result["r"].status_code == 200


@pytest.mark.integration
@pytest.mark.slow
def test_server_started_elsewhere_finds_its_models_by_name(models, tmp_path):
    """MCDROP_MODELS puts a folder of models on the model path; names resolve there, not next to the code."""
    env = {"MCDROP_MODELS": str(Path(models["tiny-cls"]).parent), "MCDROP_SERVE_MODELS": "tiny-reg"}
    with running_server(env) as base:
        assert httpx.get(f"{base}/models").json()["default"] == "tiny-reg"


def _workers_of(port: int) -> list[str]:
    """Command lines of the BentoML worker processes descended from the `bentoml serve` listening on ``port``."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(entry.name)] = (ppid, cmd)
    leader = next(pid for pid, (_, cmd) in procs.items() if " serve " in cmd and f"--port {port}" in cmd)

    def descends(pid: int) -> bool:
        while pid in procs and pid != leader:
            pid = procs[pid][0]
        return pid == leader

    return [cmd for pid, (_, cmd) in procs.items() if "_bentoml_impl.worker" in cmd and descends(pid)]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes through /proc")
def test_mcdrop_workers_starts_that_many_processes_each_answering(models):
    """MCDROP_WORKERS=2: two worker processes (each with its models and scheduler), answers as with one."""
    port = free_port()
    env = {"MCDROP_SERVE_MODELS": str(models["tiny-cls"]), "MCDROP_WORKERS": "2"}
    with running_server(env, port=port, timeout=180) as base:
        assert len(_workers_of(port)) == 2
        x = [[0.5, -1.0, 2.0, 0.1]] * 3
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(base, {"inputs": x, "n_samples": 20, "seed": 5}).json(), range(8)))
        assert all(a == answers[0] for a in answers)
