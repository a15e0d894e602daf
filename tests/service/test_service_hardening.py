"""A real `bentoml serve` against what the reliability run of issue 21 threw at it: abandoned uploads and
bursts before SIGTERM, maximum-size requests under one-row traffic, slow bodies, HTTP conformance."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from mcdrop.wire import NPY, encode_npy
from tests.server import group_alive, running_server, server_process
from tests.tiny_models import write_tiny_models

EXIT_BOUND_S = 15.0
"""How long SIGTERM may take to stop the main process and every worker once no request is in flight (an
orchestrator's grace period is typically 30 s)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def terminate(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM to the main process only (as an orchestrator sends it); whether it and all its workers were gone
    within :data:`EXIT_BOUND_S`."""
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + EXIT_BOUND_S
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return True
        time.sleep(0.2)
    return False


def request_bytes(port: int, body: bytes, length: int | None = None) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_stops_the_server_after_an_abandoned_upload(tiny):
    """Headers and part of a body, then the client closes: before the fix the request's task waited for the
    900 s backstop and the server for the task, for ever to an orchestrator."""
    with server_process({"MCDROP_SERVE_MODELS": str(tiny["tiny-cls"])}) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(request_bytes(port, b'{"inputs": [[0.1, ', length=1000))
                time.sleep(0.3)
        time.sleep(0.5)
        assert terminate(proc), f"still running {EXIT_BOUND_S:g} s after SIGTERM: {group_alive(proc.pid)}"


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_stops_the_server_after_a_burst_of_closed_connections(tiny):
    """Whole requests from clients that close at once (a load generator ending its run): uvicorn reports the
    disconnect before the guard reads the body, and the guard returns without answering."""
    with server_process({"MCDROP_SERVE_MODELS": str(tiny["tiny-cls"])}) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        body = b'{"inputs": [[0.5, -1.0, 2.0, 0.1]], "n_samples": 200}'

        def hit_and_run(_: int) -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
                s.sendall(request_bytes(port, body))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(hit_and_run, range(200)))
        time.sleep(0.5)
        assert terminate(proc), f"still running {EXIT_BOUND_S:g} s after SIGTERM: {group_alive(proc.pid)}"


@pytest.mark.integration
@pytest.mark.slow
def test_maximum_size_requests_are_admitted_while_one_row_requests_flow(tiny):
    """Rows and passes at the limits /models advertises, on an otherwise empty queue, are admitted and answered
    while one-row requests flow (before: 503, "this request needs about 100 s", priced at one-row batches' rate)."""
    with running_server({"MCDROP_SERVE_MODELS": str(tiny["tiny-cls"])}) as url:
        limits = httpx.get(f"{url}/models").json()["limits"]
        rows, passes = limits["max_rows"], limits["max_samples"]
        stop, small = threading.Event(), []

        def one_row() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    small.append(client.post("/predict", json={"inputs": [[0.5, -1.0, 2.0, 0.1]], "n_samples": 20}
                                             ).status_code)

        flow = threading.Thread(target=one_row)
        flow.start()
        try:
            time.sleep(1.0)
            x = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
            with httpx.Client(base_url=url, timeout=120) as client:
                answers = [client.post("/predict", params={"n_samples": passes, "seed": i}, content=encode_npy(x),
                                       headers={"content-type": NPY}) for i in range(3)]
        finally:
            stop.set()
            flow.join()
    assert [r.status_code for r in answers] == [200] * 3, answers[0].text
    assert all(len(r.json()["predictions"]) == rows for r in answers)
    assert len(small) > 10 and set(small) == {200}


@pytest.mark.integration
@pytest.mark.slow
def test_a_trickling_body_is_closed_at_the_overall_deadline(tiny):
    """A byte every 0.2 s never stalls for MCDROP_BODY_TIMEOUT (2 s), but the whole body has MCDROP_BODY_DEADLINE
    (3 s): 408 and the connection closed, where before the connection lasted as long as the trickle."""
    import select

    env = {"MCDROP_SERVE_MODELS": str(tiny["tiny-cls"]), "MCDROP_BODY_TIMEOUT": "2", "MCDROP_BODY_DEADLINE": "3"}
    with running_server(env) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request_bytes(port, b"", length=1000))
            start, reply = time.monotonic(), b""
            for _ in range(100):  # 20 s of trickle at most
                if select.select([s], [], [], 0.2)[0]:
                    reply = s.recv(4096)
                    break
                s.sendall(b" ")
            elapsed = time.monotonic() - start
            s.settimeout(5)
            rest = s.recv(4096) if reply else b""
            while rest:  # the server closes the connection after its answer (the body may come in a later segment)
                reply += rest
                rest = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"MCDROP_BODY_DEADLINE" in reply and elapsed < 10


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` whole (however large), then read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(20)
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


@pytest.mark.integration
@pytest.mark.slow
def test_http_conformance_on_a_real_server(tiny):
    """Oversized request lines and headers get 414 / 431 (before: a TCP reset, the answer lost), a POST to a GET
    route 405 with Allow (before: 415, no Allow), a repeated JSON key 400 naming it (before: the last one won)."""
    with running_server({"MCDROP_SERVE_MODELS": str(tiny["tiny-cls"])}) as url:
        port = int(url.rsplit(":", 1)[1])
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        long_url = b"GET /models?x=" + b"a" * (1 << 20) + b" HTTP/1.1\r\n" + host + b"\r\n"
        big_header = b"GET /models HTTP/1.1\r\n" + host + b"X-Big: " + b"b" * (1 << 20) + b"\r\n\r\n"
        many_headers = b"GET /models HTTP/1.1\r\n" + host + b"".join(b"X-H%d: 1\r\n" % i for i in range(20_000)) + b"\r\n"
        for request, status in ((long_url, b"414"), (big_header, b"431"), (many_headers, b"431")):
            reply = raw_exchange(port, request)
            assert reply.split(b"\r\n", 1)[0].split()[1] == status, reply[:200]
            assert b'"error"' in reply
        r = httpx.post(f"{url}/models", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 405 and "GET" in r.headers["allow"]
        r = httpx.post(f"{url}/predict", content=b'{"inputs": [[1, 2, 3, 4]], "seed": 1, "seed": 2}',
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["field"] == "seed"
        assert httpx.get(f"{url}/models", headers={"host": "localhost:1@evil.example"}).status_code == 400
        assert httpx.get(f"{url}/livez").status_code == 200


@pytest.mark.integration
@pytest.mark.slow
def test_mcdrop_serve_says_serving_only_when_it_serves(tiny, tmp_path):
    """A failed start printed "serving on http://..." first; now the URL comes from the service once it is up."""
    import sys

    from tests.server import free_port, stop

    def serve(models: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "mcdrop.cli.main", "serve", "--port", str(free_port()),
                                 "--models", models], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"}, start_new_session=True)

    failed = serve(str(tmp_path / "no-such-model"))
    out, _ = failed.communicate(timeout=120)
    assert failed.returncode != 0 and "cannot serve" in out and "serving on" not in out, out[-2000:]
    good = serve(str(tiny["tiny-cls"]))
    try:
        deadline, line = time.monotonic() + 90, ""
        while time.monotonic() < deadline and "serving on" not in line:
            line = good.stdout.readline()
            assert line or good.poll() is None, "the server exited"
        url = line.split("serving on ", 1)[1].split()[0]
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
    finally:
        stop(good)


@pytest.mark.integration
@pytest.mark.slow
def test_large_bad_bodies_do_not_grow_the_worker_without_bound(tiny):
    """Each 15 MB body of bad cells left the worker ~80 MB larger, body after body (parsed in a pool's threads, each
    keeping its freed memory in its own heap): 6 bodies, +350 MB after the first.  Now they reuse one heap."""
    import json

    import psutil

    row = json.dumps([1e39] * 784)
    bodies = [json.dumps({"inputs": [[cell] * 784] * int(15e6 // (len(row) + 2))}) for cell in ("a", 1e39, True)]
    with server_process({"MCDROP_SERVE_MODELS": str(tiny["tiny-cls"])}) as (url, proc):
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        rss = lambda: sum(p.memory_info().rss for p in tree)  # noqa: E731
        sizes = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(6):
                r = client.post("/predict", content=bodies[i % 3], headers={"content-type": "application/json"})
                assert r.status_code == 400
                sizes.append(rss())
    assert sorted(sizes[-3:])[1] - sizes[0] < 100 << 20, [s >> 20 for s in sizes]  # before: +141 MB, and growing
