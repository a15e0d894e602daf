"""The client's ``timeout`` is a deadline for the whole call, and its errors stay in its own tree: against a
real HTTP server on a loopback socket that trickles its answer (or sends one that cannot be read)."""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from mcdrop.client import AsyncClient, Client, ClientError, RequestTimeout, ResponseError

pytestmark = pytest.mark.integration
X = np.zeros((2, 4), np.float32)
TRICKLE_S = 8.0  # how long the slow server takes to send its whole (40-byte) answer
TIMEOUT_S = 1.0


class _Handler(socketserver.StreamRequestHandler):
    """Reads one request, then answers as ``server.behaviour`` says: ``trickle`` (headers at once, then the
    body a byte every TRICKLE_S / 40 s) or ``garbage`` (a complete 200 answer that is not the API's JSON)."""

    def handle(self) -> None:
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.rfile.read(length)
        body = b'{"model": "m", "predictions": [1, 2, 3]}'
        head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n").encode()
        try:
            self.wfile.write(head)
            if self.server.behaviour == "garbage":  # type: ignore[attr-defined]
                self.wfile.write(body)
                return
            for i in range(len(body)):
                if self.server.stop.is_set():  # type: ignore[attr-defined]
                    return
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(TRICKLE_S / len(body))
        except OSError:  # the client cut the connection: what the fix does
            pass


@contextmanager
def slow_server(behaviour: str) -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.behaviour, server.stop = behaviour, threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stop.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


def test_a_trickled_answer_is_cut_off_at_the_deadline_blocking():
    """It used to wait for the last byte (19.5 s with timeout=2 in the issue), then raise pydantic's error."""
    with slow_server("trickle") as url, Client(url, timeout=TIMEOUT_S, max_rows=100, retries=2) as client:
        start = time.monotonic()
        with pytest.raises(RequestTimeout, match=r"within 1\.0 s"):
            client.predict(X, seed=1)
        assert time.monotonic() - start < TRICKLE_S / 2  # cut off long before the server would have finished


def test_a_trickled_answer_is_cut_off_at_the_deadline_async():
    async def call() -> None:
        async with AsyncClient(url, timeout=TIMEOUT_S, max_rows=1, retries=2) as client:  # two slices, one deadline
            await client.predict(X, seed=1)

    with slow_server("trickle") as url:
        start = time.monotonic()
        with pytest.raises(RequestTimeout):
            asyncio.run(call())
        assert time.monotonic() - start < TRICKLE_S / 2


@pytest.mark.parametrize("kind", ["blocking", "async"])
def test_an_unreadable_answer_is_a_client_error(kind):
    """A 200 whose body is not a PredictResponse: ResponseError (a ClientError), not pydantic.ValidationError."""
    with slow_server("garbage") as url:
        with pytest.raises(ResponseError, match="cannot be read") as err:
            if kind == "blocking":
                with Client(url, timeout=10, max_rows=100) as client:
                    client.predict(X, seed=1)
            else:
                async def call() -> None:
                    async with AsyncClient(url, timeout=10, max_rows=100) as client:
                        await client.predict(X, seed=1)
                asyncio.run(call())
        assert isinstance(err.value, ClientError)
        with Client(url, timeout=10) as client, pytest.raises(ResponseError):
            client.models()
