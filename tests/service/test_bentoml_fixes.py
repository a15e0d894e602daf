"""The BentoML TimeoutMiddleware fix: no live timer per finished request, and the backstop 504 still works."""

from __future__ import annotations

import asyncio
import json

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
