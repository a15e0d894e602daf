"""Fair, bounded scheduling of prediction work (no HTTP here).

One worker thread computes; the event loop only queues and waits.  Work is measured in multiply-adds (rows x
passes x the model's cost, scaled to the slowest model's speed: :meth:`Predictor.work`) and cut into slices of
about ``slice_cost``:

* **Small requests are batched.**  Requests that fit in one slice and have not started are answered together
  in one engine call (up to ``max_rows`` rows; an idle worker waits ``batch_wait_ms`` for company).
* **Large requests are sliced by rows** (each slice is the same request on fewer rows, with the same seed
  and row positions, so the answer equals the unsliced one) and progress a slice at a time.
* **New work first, then earliest deadline.**  After every slice the worker picks, among the requests that have
  received less than one slice of work, the one that has received the least; only when there is none, the
  started request with the earliest deadline.  So a one-row request arriving behind eight large ones waits for
  one slice, not for them to finish; and the large ones finish one after another, in deadline order, instead
  of all sharing the worker until all of them miss their deadlines together.
* **Deadlines and cancellation.**  Every request has a deadline; when it passes, or the client goes away,
  the request is cancelled: its remaining slices are dropped and a running engine call stops at its next
  chunk.  No work is done for a request after its 504.  A started request whose remaining work would need
  longer than its time left (at the measured rate) gets its 504 at once rather than at the deadline.
* **Overload.**  Work is admitted only if the backlog (queued work / the rate of large work) leaves it time to
  finish before its deadline; otherwise :class:`~mcdrop.serving.errors.Overloaded` (503) at once.  On an idle
  queue a request of more than one slice is admitted whatever its price: the price is an estimate, a refusal
  would not make a retry succeed, and its first slice measures the rate (a request that then cannot finish gets
  its 504 early, below).  Work in one slice (a single row) cannot be measured or cut short before it ends, so it
  is refused on its price alone.
* **Pricing.**  A request's seconds are its multiply-adds over the rate of *large* work: the larger of the
  predictor's start-up measurement on a large slice and a moving average over engine calls of at least half a
  slice.  Never below the start-up rate: a pessimistic average (large slices that ran while the machine was
  busy) would otherwise refuse every large request, and with none admitted nothing would correct it.
  One-row batches run far fewer multiply-adds per second (the per-call overhead dominates), so a rate averaged
  over all calls priced a maximum-size request 16-45x too high under one-row traffic and refused it on an
  empty queue (issue 21).  Small requests priced at the large rate are priced low, but they are batched and
  the large work behind them dominates any backlog that matters; a request admitted on a low estimate still
  gets its 504 as soon as its remaining work cannot fit (:meth:`_Job.hopeless`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mcdrop.plan import Plan, row_slices
from mcdrop.schemas import PredictRequest, PredictResult
from mcdrop.serving.errors import Cancelled, DeadlineExceeded, Overloaded, PredictError

__all__ = ["Backend", "Scheduler"]


class Backend(Protocol):
    """What the scheduler needs of a predictor (:class:`~mcdrop.serving.predictor.Predictor` is one)."""

    def plan(self, request: PredictRequest | Plan) -> Plan:
        """The door: the request checked against its model and the limits (a :class:`PredictError` if refused)
        and made a plan (seed drawn, cap resolved, cost counted); a plan is returned as it is."""

    def work(self, request: PredictRequest | Plan) -> float:
        """The plan's cost in multiply-adds (at the rate the scheduler measures)."""

    def predict_many(self, requests: Sequence[PredictRequest | Plan], *, cancelled: Callable[[], bool] | None = None
                     ) -> list[PredictResult | PredictError]:
        """Answer the plans in order, each with its result or its error."""

_counter = itertools.count()


@dataclass(eq=False)
class _Job:
    plan: Plan
    cost: float
    slices: list[tuple[int, int]]
    future: asyncio.Future[PredictResult]
    loop: asyncio.AbstractEventLoop
    deadline: float
    timeout: float
    order: int = field(default_factory=lambda: next(_counter))
    done_cost: float = 0.0
    parts: list[PredictResult] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: PredictError | None = None

    @property
    def started(self) -> bool:
        return bool(self.parts) or self.done_cost > 0

    @property
    def remaining_cost(self) -> float:
        return max(self.cost - self.done_cost, 0.0)

    def hopeless(self, rate: float, now: float) -> DeadlineExceeded | None:
        """The 504 of a started request that cannot finish by its deadline at ``rate``, else None."""
        need, left = self.remaining_cost / rate, self.deadline - now
        if not self.started or need <= left:
            return None
        return DeadlineExceeded(f"the request would need about {need:.1f} s more but has {max(left, 0):.1f} s left "
                                f"of its {self.timeout:g} s limit (MCDROP_REQUEST_TIMEOUT); it was cancelled early; "
                                "send fewer rows or passes, or retry later")

    def late(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"the request took longer than {self.timeout:g} s (MCDROP_REQUEST_TIMEOUT) and was "
                                "cancelled; send fewer rows or passes, or retry later")

    def stop(self, reason: PredictError) -> None:
        if self.reason is None:
            self.reason = reason
        self.cancelled.set()

    def finish(self, outcome: PredictResult | BaseException) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the waiter's event loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(settle)


class Scheduler:
    """Answers requests with ``predictor`` in a worker thread (see the module docs).

    Args:
        predictor: the predictor.
        slice_cost: multiply-adds computed between two scheduling decisions.
        max_rows: rows of one batch of small requests.
        batch_wait_ms: how long an idle worker waits for more small requests.
        timeout_s: the default deadline of a request, in seconds.
        rate: the first estimate of the throughput of large work in multiply-adds per second (then measured).
    """

    LARGE_WORK = 0.5
    """Engine calls of at least this fraction of a slice measure the rate of large work."""

    def __init__(self, predictor: Backend, *, slice_cost: float = 2e9, max_rows: int = 1024,
                 batch_wait_ms: float = 2.0, timeout_s: float = 60.0, rate: float = 2e10) -> None:
        self.predictor = predictor
        self.slice_cost, self.max_rows = float(slice_cost), max_rows
        self.batch_wait, self.timeout_s = batch_wait_ms / 1e3, timeout_s
        self.rate = float(rate)  # multiply-adds per second of large work: the admission price (see the module docs)
        self.start_rate = self.rate  # the start-up estimate: the price's floor
        self.slice_rate = 0.0  # the same, measured here only (0: no large work has run yet)
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batch_sizes: list[int] = []  # recent numbers of requests per engine call (metrics, tests)

    # ------------------------------------------------------------------ event-loop side

    def backlog_seconds(self) -> float:
        """Estimated seconds to finish the queued work."""
        with self._cond:
            return sum(j.remaining_cost for j in self._jobs) / self.rate

    def seconds(self, request: PredictRequest | Plan) -> float:
        """The request's price: its work (:meth:`Predictor.work`) over the rate of large work."""
        return self.predictor.work(request) / self.rate

    def overloaded(self) -> bool:
        """Whether the queued work alone would not finish within a request's timeout."""
        return self.backlog_seconds() > self.timeout_s

    async def submit(self, request: PredictRequest | Plan, *, timeout_s: float | None = None) -> PredictResult:
        """Queue and answer a plan (a request is planned first, :meth:`Predictor.plan`: checked, its seed drawn);
        raises a :class:`PredictError` (also when cancelled or late).

        Cancelling the awaiting task (the client went away) cancels the request's remaining work.
        """
        plan = self.predictor.plan(request)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        cost = self.predictor.work(plan)
        need = cost / self.rate
        loop = asyncio.get_running_loop()
        job = _Job(plan, cost, self._slices(plan, cost), loop.create_future(), loop, time.monotonic() + timeout, timeout)
        with self._cond:
            backlog = self.backlog_seconds()  # under the same (reentrant) lock as the append below
            # On an idle queue, sliced work is admitted whatever its price: its first slice measures the rate, and
            # it gets its 504 early if it then cannot fit (_Job.hopeless).  Work in one slice cannot be cut short.
            if backlog + need > timeout and (self._jobs or len(job.slices) == 1):
                raise self._refusal(need, backlog, timeout)
            self._start()
            self._jobs.append(job)
            self._cond.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            job.stop(job.late())
            raise job.reason from None  # type: ignore[misc]
        except asyncio.CancelledError:
            job.stop(Cancelled("the client went away"))
            raise

    @staticmethod
    def _refusal(need: float, backlog: float, timeout: float) -> Overloaded:
        if need <= timeout:
            return Overloaded(f"the server is busy: {backlog:.1f} s of queued work, and this request needs about "
                              f"{need:.1f} s more, beyond the {timeout:g} s limit; retry later")
        queued = f", and {backlog:.1f} s of work is queued before it" if backlog > 0 else ""
        return Overloaded(f"this request needs about {need:.1f} s at the server's estimated rate, beyond the "
                          f"{timeout:g} s limit (MCDROP_REQUEST_TIMEOUT){queued}; send fewer rows or passes")

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel the queued work and wait (up to ``timeout_s``) for the worker to stop."""
        with self._cond:
            self._closed = True
            for job in self._jobs:
                job.stop(Cancelled("the server is shutting down"))
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _slices(self, plan: Plan, cost: float) -> list[tuple[int, int]]:
        rows = len(plan)
        per_row = cost / rows
        return row_slices(rows, math.floor(self.slice_cost / per_row) if per_row > 0 else rows)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="mcdrop-scheduler", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ worker side

    def _next(self) -> tuple[list[_Job], tuple[int, int] | None]:
        """The jobs to run next: a batch of fresh small jobs, or one slice of the least-served job."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for job in list(self._jobs):
                    reason = self._expired(job, now)
                    if reason is not None:
                        job.stop(reason)
                        self._jobs.remove(job)
                        job.finish(reason)
                if self._jobs:
                    break
                self._cond.wait()
            if self._closed:
                return [], None
            first = min(self._jobs, key=self._priority)
            if len(first.slices) > 1 or first.started:
                return [first], first.slices[0]
            small = self._small()
            if len(small) == 1 and self.batch_wait > 0:  # an idle worker waits briefly for company
                self._cond.wait(self.batch_wait)
                small = self._small() or small
            batch: list[_Job] = []
            rows, cost = 0, 0.0
            for job in small:
                n = len(job.plan)
                if batch and (rows + n > self.max_rows or cost + job.cost > 4 * self.slice_cost):
                    break
                batch.append(job)
                rows, cost = rows + n, cost + job.cost
            return batch, None

    def _expired(self, job: _Job, now: float) -> PredictError | None:
        """Why ``job`` must stop now (cancelled, past its deadline, or unable to meet it), else None."""
        if job.cancelled.is_set():
            return job.reason or job.late()
        if job.deadline < now:
            return job.late()
        return job.hopeless(self.slice_rate, now) if self.slice_rate else None

    def _priority(self, job: _Job) -> tuple[int, float, int]:
        """New work (less than one slice received) by least work received, then the rest by deadline."""
        if job.done_cost < self.slice_cost:
            return 0, job.done_cost, job.order
        return 1, job.deadline, job.order

    def _small(self) -> list[_Job]:
        return sorted((j for j in self._jobs if len(j.slices) == 1 and not j.started and not j.cancelled.is_set()),
                      key=lambda j: j.order)

    def _work(self) -> None:
        while True:
            jobs, part = self._next()
            if not jobs:
                return
            start = time.perf_counter()
            if part is None:
                self._run_batch(jobs)
                cost = sum(j.cost for j in jobs)
            else:
                cost = self._run_slice(jobs[0], part)
            self._measure(cost, time.perf_counter() - start)

    def _measure(self, cost: float, elapsed: float) -> None:
        """Update the rate of large work with an engine call of ``cost`` multiply-adds that took ``elapsed`` s;
        smaller calls (one-row batches, a request's last short slice) say nothing about it."""
        if cost < self.LARGE_WORK * self.slice_cost or elapsed <= 1e-4:
            return
        rate = cost / elapsed  # the first measurement replaces the start-up estimate, then a moving average
        self.slice_rate = 0.8 * self.slice_rate + 0.2 * rate if self.slice_rate else rate
        self.rate = max(self.slice_rate, self.start_rate)

    def _run_batch(self, jobs: list[_Job]) -> None:
        with self._cond:
            for job in jobs:
                self._jobs.remove(job)
        self.batch_sizes = [*self.batch_sizes[-999:], len(jobs)]
        answers: list[PredictResult | BaseException]
        try:
            answers = list(self.predictor.predict_many([j.plan for j in jobs]))
        except Exception as err:  # the batch failed as a whole: every request gets the error
            answers = [err] * len(jobs)
        for job, answer in zip(jobs, answers, strict=True):
            job.finish(answer)

    def _run_slice(self, job: _Job, part: tuple[int, int]) -> float:
        r0, r1 = part
        sub = job.plan.rows(r0, r1)
        cost = job.cost * (r1 - r0) / len(job.plan)
        self.batch_sizes = [*self.batch_sizes[-999:], 1]
        answer: PredictResult | BaseException
        try:
            answer = self.predictor.predict_many([sub], cancelled=lambda: job.cancelled.is_set()
                                                      or time.monotonic() > job.deadline)[0]
        except Exception as err:
            answer = err
        with self._cond:
            job.done_cost += cost
            job.slices.pop(0)
            failed = isinstance(answer, BaseException)
            if (failed or not job.slices) and job in self._jobs:
                self._jobs.remove(job)
        if isinstance(answer, BaseException):  # failed
            if isinstance(answer, Cancelled):
                answer = job.reason or (job.late() if time.monotonic() > job.deadline else answer)
            job.finish(answer)
        else:
            job.parts.append(answer)
            if not job.slices:
                job.finish(PredictResult.concat(job.parts))
        return cost
