"""Micro-batching of concurrent requests: queue, group, one call, answer each (no HTTP here).

While one batch is being computed in a worker thread, new requests wait in the queue; when the worker is
free, everything queued (up to ``max_rows`` rows) becomes the next batch.  Under load, batches grow with the
arrival rate and latency stays near one batch's compute time; when idle, a request waits at most
``max_wait_ms`` for company.  Requests are queued rather than shed: only a full queue (``max_queue``) refuses.
Grouping by model, mode and N is the handler's job (:meth:`mcdrop.predictor.Predictor.predict_many`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["MicroBatcher", "QueueFullError"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class QueueFullError(RuntimeError):
    """More requests are waiting than the batcher's ``max_queue``: retry later (HTTP 503)."""


@dataclass
class _Item(Generic[Req]):
    request: Req
    rows: int
    future: asyncio.Future[Any]


class MicroBatcher(Generic[Req, Resp]):
    """Answer requests with ``handler(list_of_requests) -> list_of_responses`` run in a worker thread.

    Args:
        handler: answers a list of requests in order; an element may be an exception instance to raise.
        rows: the number of rows of a request (batches hold at most ``max_rows`` rows, or one larger request).
        max_wait_ms: how long an idle batcher waits for more requests before computing.
        max_rows: rows per batch.
        max_queue: requests waiting at most; beyond that :class:`QueueFullError`.
    """

    def __init__(self, handler: Callable[[Sequence[Req]], Sequence[Resp | Exception]], *,
                 rows: Callable[[Req], int] = lambda _r: 1, max_wait_ms: float = 2.0, max_rows: int = 1024,
                 max_queue: int = 4096) -> None:
        self.handler, self.rows = handler, rows
        self.max_wait, self.max_rows, self.max_queue = max_wait_ms / 1e3, max_rows, max_queue
        self._queue: asyncio.Queue[_Item[Req]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes (requests), for metrics and tests

    async def submit(self, request: Req) -> Resp:
        """Queue ``request`` and wait for its answer."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        if self._queue.qsize() >= self.max_queue:
            raise QueueFullError(f"{self._queue.qsize()} requests are already waiting (limit {self.max_queue}); retry later")
        future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(request, self.rows(request), future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        pending: _Item[Req] | None = None
        while True:
            first = pending or await self._queue.get()
            pending = None
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self.max_wait
            while rows < self.max_rows:
                try:
                    if not self._queue.empty():
                        item = self._queue.get_nowait()
                    else:
                        timeout = deadline - time.monotonic()
                        if timeout <= 0:
                            break
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if rows + item.rows > self.max_rows:
                    pending = item
                    break
                batch.append(item)
                rows += item.rows
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
            try:
                answers = await asyncio.to_thread(self.handler, [item.request for item in live])
            except Exception as err:  # the handler failed as a whole: every waiter gets the error
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            for item, answer in zip(live, answers, strict=True):
                if item.future.done():
                    continue
                if isinstance(answer, Exception):
                    item.future.set_exception(answer)
                else:
                    item.future.set_result(answer)
