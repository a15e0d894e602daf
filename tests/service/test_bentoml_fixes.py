"""The BentoML TimeoutMiddleware fixes: no live timer per finished request, a request that ends without an answer
ends at once, and the backstop 504 still works."""

from __future__ import annotations

import asyncio
import json

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from mcdrop.service import bentoml_fixes

bentoml_fixes.install()


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _slow(scope, receive, send) -> None:
    await asyncio.sleep(5)
    await _ok(scope, receive, send)


def _serve(app, timeout: float, requests: int) -> tuple[list[dict], int]:
    """Messages sent and timers still scheduled (not cancelled) on a plain asyncio loop after the requests."""
    middleware = TimeoutMiddleware(app, timeout=timeout)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> int:
        for _ in range(requests):
            await middleware({"type": "http", "path": "/predict"}, None, send)
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # asyncio's timer heap

    return sent, asyncio.run(main())


def test_finished_requests_leave_no_timer_behind():
    sent, live_timers = _serve(_ok, timeout=900, requests=50)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 50
    assert live_timers == 0  # unfixed BentoML: 50 timers (with their futures and contexts) alive for 900 s


def test_backstop_timeout_still_answers_504():
    sent, _ = _serve(_slow, timeout=0.05, requests=1)
    assert sent[0]["status"] == 504
    assert "0.05 seconds" in json.loads(sent[1]["body"])["error"]


async def _silent(scope, receive, send) -> None:
    """An application that returns without answering (the client has gone: ASGI allows it)."""


async def _broken(scope, receive, send) -> None:
    raise RuntimeError("broken before any answer")


def test_a_request_that_ends_without_an_answer_ends_at_once():
    """Unfixed BentoML waited for the backstop (900 s) here, and uvicorn's shutdown waited for that task."""

    async def main() -> None:
        await asyncio.wait_for(TimeoutMiddleware(_silent, timeout=900)({"type": "http"}, None, None), 10)

    asyncio.run(main())  # raises TimeoutError (after 10 s) if the middleware still waits


def test_an_application_error_before_the_answer_propagates():
    async def main() -> None:
        await asyncio.wait_for(TimeoutMiddleware(_broken, timeout=900)({"type": "http"}, None, None), 10)

    with pytest.raises(RuntimeError, match="broken before any answer"):
        asyncio.run(main())


def test_cancelling_the_request_cancels_the_application():
    started, cancelled = asyncio.Event(), []

    async def waiting(scope, receive, send) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        task = asyncio.ensure_future(TimeoutMiddleware(waiting, timeout=900)({"type": "http"}, None, None))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert cancelled == [True]  # unfixed: the application ran on after its request was cancelled

    asyncio.run(main())
