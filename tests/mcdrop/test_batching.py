"""MicroBatcher: concurrent requests share handler calls, each gets its own answer or error, rows cap batches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mcdrop.batching import MicroBatcher, QueueFullError


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_merged_and_answered_in_order():
    calls: list[list[int]] = []

    def handler(requests):
        calls.append(list(requests))
        return [r * 10 for r in requests]

    async def main():
        batcher = MicroBatcher(handler, max_wait_ms=50)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert run(main()) == [i * 10 for i in range(20)]
    assert sum(len(c) for c in calls) == 20 and len(calls) < 20  # merged, each request exactly once


def test_an_error_answer_fails_only_its_request():
    def handler(requests):
        return [ValueError(f"bad {r}") if r % 2 else r for r in requests]

    async def main():
        batcher = MicroBatcher(handler, max_wait_ms=20)
        return await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)

    answers = run(main())
    assert answers[0::2] == [0, 2, 4]
    assert [str(a) for a in answers[1::2]] == ["bad 1", "bad 3", "bad 5"]


def test_a_failing_handler_fails_its_batch_and_the_batcher_keeps_serving():
    def handler(requests):
        if "boom" in requests:
            raise RuntimeError("handler failed")
        return list(requests)

    async def main():
        batcher = MicroBatcher(handler, max_wait_ms=1)
        with pytest.raises(RuntimeError, match="handler failed"):
            await batcher.submit("boom")
        return await batcher.submit("ok")

    assert run(main()) == "ok"


def test_batches_hold_at_most_max_rows_rows():
    seen: list[int] = []

    def handler(requests):
        seen.append(sum(requests))
        return list(requests)

    async def main():
        batcher = MicroBatcher(handler, rows=lambda r: r, max_rows=10, max_wait_ms=50)
        return await asyncio.gather(*(batcher.submit(4) for _ in range(7)), batcher.submit(25))

    assert run(main()) == [4] * 7 + [25]
    assert 25 in seen and all(s <= 10 for s in seen if s != 25)  # a larger request goes alone


def test_a_full_queue_refuses():
    release = threading.Event()

    def handler(requests):
        release.wait(5)
        return list(requests)

    async def main():
        batcher = MicroBatcher(handler, max_wait_ms=0, max_queue=2)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the worker is now blocked in the handler with request 0
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="limit 2"):
            await batcher.submit(3)
        release.set()
        return await asyncio.gather(first, *waiting)

    assert run(main()) == [0, 1, 2]
