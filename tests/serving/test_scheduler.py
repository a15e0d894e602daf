"""Scheduler: batching of small requests, slicing of large ones, new work first then earliest deadline,
deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from mcdrop.schemas import Limits, PredictRequest
from mcdrop.serving.errors import DeadlineExceeded, Overloaded, TooLarge
from mcdrop.serving.predictor import Predictor
from mcdrop.serving.scheduler import Scheduler
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_probabilities_close

PASS_COST = 112  # multiply-adds of one pass of tiny-cls


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    paths = write_tiny_models(tmp_path_factory.mktemp("models"))
    predictor = Predictor([str(paths["tiny-cls"])], limits=Limits(max_rows=4096, max_samples=100_000))
    predictor.warm_up()  # as the service does at start-up: no test's first submit pays for it
    return predictor


@pytest.fixture(autouse=True)
def _close_schedulers(monkeypatch):
    """Every Scheduler a test makes is closed when the test ends; its worker thread then has to have stopped."""
    made: list[Scheduler] = []
    init = Scheduler.__init__

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Scheduler, "__init__", recorded)
    yield
    for scheduler in made:
        scheduler.close()
    assert not [s for s in made if s._thread is not None and s._thread.is_alive()]


def req(rows: int, n: int = 20, seed: int = 0, **kw) -> PredictRequest:
    x = np.random.default_rng(rows).normal(size=(rows, 4))
    return PredictRequest.model_validate({"inputs": x, "n_samples": n, "seed": seed, **kw}, strict=False)


def test_concurrent_small_requests_share_one_engine_call(predictor):
    scheduler = Scheduler(predictor, batch_wait_ms=50)

    async def main():
        return await asyncio.gather(*(scheduler.submit(req(1 + i % 3, seed=i)) for i in range(12)))

    answers = asyncio.run(main())
    assert [len(a) for a in answers] == [1 + i % 3 for i in range(12)]
    assert max(scheduler.batch_sizes) > 1
    for i, a in enumerate(answers):
        assert_probabilities_close(a.probabilities, predictor.predict(req(1 + i % 3, seed=i)).probabilities)


def test_a_large_request_is_sliced_and_answers_as_one_call(predictor):
    scheduler = Scheduler(predictor, slice_cost=50 * 20 * PASS_COST)  # 50 rows a slice
    big = req(400, n=20, seed=3, return_samples=True)
    answer = asyncio.run(scheduler.submit(big))
    assert len(scheduler.batch_sizes) == 8  # 400 rows / 50
    whole = predictor.predict(big)
    assert_probabilities_close(answer.probabilities, whole.probabilities)
    assert answer.samples.shape == (20, 400, 3) and answer.seed == 3


def test_unseeded_sliced_request_uses_one_seed(predictor):
    scheduler = Scheduler(predictor, slice_cost=10 * 20 * PASS_COST)
    answer = asyncio.run(scheduler.submit(req(40, seed=None)))  # type: ignore[arg-type]
    again = predictor.predict(req(40, seed=answer.seed))
    assert_probabilities_close(answer.probabilities, again.probabilities)


def test_a_small_request_overtakes_large_ones(predictor):
    """Least attained service first: a one-row request arriving behind large ones waits for one slice."""
    scheduler = Scheduler(predictor, slice_cost=2 * 10_000 * PASS_COST)  # two rows of 10,000 passes a slice
    finished: dict[str, float] = {}

    async def timed(name: str, request: PredictRequest) -> None:
        await scheduler.submit(request)
        finished[name] = time.perf_counter()

    async def main():
        large = [asyncio.create_task(timed(f"large{i}", req(40, n=10_000, seed=i))) for i in range(3)]
        await asyncio.sleep(0.02)
        await timed("small", req(1, n=20))
        await asyncio.gather(*large)

    asyncio.run(main())
    assert all(finished["small"] < finished[f"large{i}"] for i in range(3))


def test_deadline_cancels_the_remaining_work(predictor):
    """No slice starts after the 504: at most the one in flight finishes (it stops at its next chunk)."""
    scheduler = Scheduler(predictor, slice_cost=1 * 20_000 * PASS_COST)
    counts = []

    async def main():
        with pytest.raises(DeadlineExceeded, match=r"(took longer than|of its) 0\.2 s"):
            await scheduler.submit(req(500, n=20_000), timeout_s=0.2)
        counts.append(len(scheduler.batch_sizes))
        await asyncio.sleep(0.3)
        counts.append(len(scheduler.batch_sizes))

    asyncio.run(main())
    assert counts[0] < 500 and counts[1] - counts[0] <= 1
    assert scheduler.backlog_seconds() == 0


def test_started_large_requests_finish_in_deadline_order(predictor, monkeypatch):
    """Large requests do not share the worker until all of them are late: once each has had its first slice (new
    work first), the earliest deadline runs to the end before the next one gets another slice.  Checked on the
    order of the engine calls, not on the clock (a busy machine must not fail it)."""
    scheduler = Scheduler(predictor, slice_cost=1 * 20_000 * PASS_COST)
    calls: list[int] = []
    predict_many = predictor.predict_many

    def recorded(requests, **kw):
        calls.extend(r.seed for r in requests)
        return predict_many(requests, **kw)

    monkeypatch.setattr(predictor, "predict_many", recorded)
    finished: list[int] = []

    async def timed(i: int) -> None:
        await scheduler.submit(req(20, n=20_000, seed=i))
        finished.append(i)

    async def main() -> None:
        await asyncio.gather(*(timed(i) for i in range(3)))

    asyncio.run(main())
    assert finished == [0, 1, 2]
    assert sorted(calls[:3]) == [0, 1, 2]  # every request's first slice before any second slice
    assert calls[3:] == sorted(calls[3:]) and len(calls) == 3 * 20  # then one request at a time, earliest deadline first


def test_a_request_that_cannot_meet_its_deadline_gets_its_504_early(predictor):
    """Admitted on an optimistic estimate, a request whose 400 rows need four times its timeout at the measured
    rate of slices gets its 504 after its first slice, not at the deadline."""
    scheduler = Scheduler(predictor, slice_cost=1 * 20_000 * PASS_COST)

    async def main() -> tuple[float, float]:
        await scheduler.submit(req(4, n=20_000))  # measures the rate of slices
        timeout = 400 * 20_000 * PASS_COST / scheduler.slice_rate / 4
        scheduler.rate = 1e18  # an admission estimate that turned out optimistic (e.g. the machine got busier)
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="would need about"):
            await scheduler.submit(req(400, n=20_000), timeout_s=timeout)
        return time.perf_counter() - start, timeout

    elapsed, timeout = asyncio.run(main())
    assert elapsed < timeout / 2
    assert scheduler.backlog_seconds() == 0


def test_a_cancelled_task_cancels_its_work(predictor):
    scheduler = Scheduler(predictor, slice_cost=1 * 20_000 * PASS_COST)

    async def main():
        task = asyncio.create_task(scheduler.submit(req(200, n=20_000)))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)

    asyncio.run(main())
    assert scheduler.backlog_seconds() == 0


def test_overload_is_refused_at_once(predictor):
    """Behind queued work, a request that would miss its deadline is refused at once (503), and the message says
    whether the queue or the request itself is too long."""
    scheduler = Scheduler(predictor, timeout_s=1.0, rate=1e6)  # pretend the machine is very slow

    async def main():
        first = asyncio.create_task(scheduler.submit(req(4096, n=20_000)))  # admitted: the queue is idle
        await asyncio.sleep(0)  # ... and now queued
        with pytest.raises(Overloaded, match=r"busy: \d+\.\d s of queued work"):
            await scheduler.submit(req(1, n=20))
        with pytest.raises(Overloaded, match=r"this request needs about 11\.\d s .* beyond the 1 s limit"):
            await scheduler.submit(req(100, n=1000))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())


def test_an_idle_queue_admits_a_request_its_price_says_is_too_long(predictor):
    """The price is an estimate: on an idle queue a refusal would not make a retry succeed, so the request runs,
    and its first slices measure the rate (here the machine is far faster than the price assumed)."""
    scheduler = Scheduler(predictor, timeout_s=5.0, rate=1e6, slice_cost=10 * 1000 * PASS_COST)
    big = req(100, n=1000)
    assert scheduler.seconds(big) > 2 * scheduler.timeout_s

    async def main():
        return await scheduler.submit(big)

    assert len(asyncio.run(main())) == 100
    assert scheduler.slice_rate > 1e6


def test_an_idle_queue_still_refuses_one_slice_of_work_priced_beyond_its_timeout(predictor):
    """A single row is one slice: nothing measures it or cuts it short before it ends, so its price decides."""
    scheduler = Scheduler(predictor, timeout_s=1.0, rate=1e6)
    one_row = req(1, n=100_000)  # 11.2 s at the pretended rate

    async def main():
        with pytest.raises(Overloaded, match=r"needs about 11\.2 s .* beyond the 1 s limit \(MCDROP_REQUEST_TIMEOUT\); "
                           r"send fewer rows or passes"):
            await scheduler.submit(one_row)

    asyncio.run(main())
    assert scheduler._thread is None  # refused before any work started


def test_checks_happen_before_queueing(predictor):
    scheduler = Scheduler(predictor)

    async def main():
        with pytest.raises(TooLarge):
            await scheduler.submit(req(5000))

    asyncio.run(main())
    assert scheduler._thread is None  # refused without starting any work


def test_one_row_traffic_does_not_raise_the_price_of_large_work(predictor):
    """One-row batches run far fewer multiply-adds per second than large work; a price averaged over them refused
    requests within the advertised limit on an empty queue (issue 21).  The price stays the rate of large work:
    a request that needs about a tenth of its timeout at that rate is admitted after one-row traffic."""
    scheduler = Scheduler(predictor, rate=predictor.rate, slice_cost=512 * 200 * PASS_COST)  # 8 slices
    big = req(4096, n=200)
    price = scheduler.seconds(big)
    assert price == pytest.approx(predictor.work(big) / predictor.rate)

    async def main():
        for i in range(20):
            await scheduler.submit(req(1, seed=i))
        assert scheduler.seconds(big) == price  # small calls do not measure the rate of large work
        return await scheduler.submit(big, timeout_s=max(10 * price, 1.0))

    assert len(asyncio.run(main())) == 4096
    assert scheduler.slice_rate > 0 and scheduler.rate == max(scheduler.slice_rate, predictor.rate)  # large work measured


def test_slow_large_work_does_not_lock_out_large_requests(predictor):
    """Large slices that ran slowly (a busy machine) must not price every later large request out: with none
    admitted, nothing would correct the estimate.  The price never exceeds the start-up rate's; a request that
    then cannot finish gets its 504 early (test above)."""
    scheduler = Scheduler(predictor, rate=predictor.rate, slice_cost=512 * 200 * PASS_COST)
    big = req(4096, n=200)
    price = scheduler.seconds(big)
    scheduler._measure(512 * 200 * PASS_COST, 1e3 * 512 * 200 * PASS_COST / predictor.rate)  # a slice 1000x slower
    assert scheduler.slice_rate < predictor.rate / 100 and scheduler.seconds(big) == price
