"""Fixes for BentoML 1.4 that the service installs at import (:func:`install`).

BentoML's ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``, the ``traffic.timeout`` backstop)
runs the application in a task and waits on a *waiter* that only the application's first ``send`` (or the
backstop timer) sets.  Two defects follow:

* **Requests that end without a response hang for the whole backstop.**  An application may return without
  sending when the client has gone (ASGI allows it: there is nobody to answer): the guard does so when a
  client abandons its upload, or when uvicorn reports ``http.disconnect`` before the body was read (a load
  generator closing its connections).  The waiter is then never set, so the request's task waits for the
  900 s backstop of :mod:`mcdrop.service.service`, and uvicorn's graceful shutdown waits for that task:
  SIGTERM did not stop the server (issue 21).  An application that raises before it sends waited the same
  way, its exception unseen.  Fixed: the application's end also releases the waiter, and its exception
  propagates.
* **Every request's timer outlived it.**  ``loop.call_later(timeout, ...)`` was never cancelled, so each
  request's timer, future and context (with its tracing span) stayed alive for ``timeout`` seconds after the
  answer: at 700 requests/s, hundreds of thousands of objects and a latency tail that grew with the server's
  age (BENCHMARKS.md §2).  Fixed: the timer is cancelled when the request ends.

Cancelling the request's task (uvicorn does it when its graceful-shutdown timeout expires) now cancels the
application's task too, instead of leaving it running.
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

    def release(_: Any = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    async def _send(message: Any) -> None:
        release()
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    fut.add_done_callback(release)  # an application that returns (or raises) without sending ends the wait too
    try:
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
    except asyncio.CancelledError:
        fut.cancel()
        raise
    finally:
        timer.cancel()


def install() -> None:
    """Replace ``TimeoutMiddleware.__call__`` with the fixed version (idempotent)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign, assignment]
