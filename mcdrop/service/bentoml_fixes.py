"""A fix for BentoML 1.4 that the service installs at import (:func:`install`).

BentoML's ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``, the ``traffic.timeout`` backstop)
schedules ``loop.call_later(timeout, ...)`` for every request and never cancels it, so each request's timer,
future and context (with its tracing span) stay alive for ``timeout`` seconds after the answer: at 700 requests/s
and the 900 s backstop of :mod:`mcdrop.service.service`, hundreds of thousands of objects.  The heap grows, every
full garbage collection walks them, and the latency tail grows with the server's age (BENCHMARKS.md §2: p99 from
140 ms in the first 10 s to 400 ms after 40 s).  The fixed ``__call__`` is the original with the timer cancelled
when the request ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["install"]


async def _call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)
    try:

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                from starlette.responses import JSONResponse

                response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                        status_code=504)
                await response(scope, receive, send)
        else:
            await fut
    finally:
        timer.cancel()


def install() -> None:
    """Replace ``TimeoutMiddleware.__call__`` with the version that cancels its timer (idempotent)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
