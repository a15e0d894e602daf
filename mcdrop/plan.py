"""A request made immutable at its door: the only place a request's seed is drawn (torch-free).

The service (:meth:`mcdrop.serving.predictor.Predictor.plan`), the CLI, the client and Ray scoring each turn a
request, validated once by its schema (:class:`~mcdrop.schemas.PredictRequest`), into a :class:`Plan`: the
request with the seed drawn here when MC mode needs one, the adaptive cap resolved, and, where a server is at
hand, the model's name and the request's cost.  Below the door nothing is drawn, defaulted or validated again:
the scheduler queues and slices plans, the predictor runs them.

A large plan is cut into row slices by :meth:`Plan.rows` (the client's slices of ``max_rows``, the scheduler's
slices of work, the CLI's and Ray's chunks of a file): a slice keeps the seed and shifts ``row_offset``, and a
row's masks depend on (seed, ``row_offset`` + index, sample), so the slices' answers are the whole plan's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from mcdrop.request import MIN_ADAPTIVE_SAMPLES, Mode, new_seed
from mcdrop.schemas import AcquireRequest, PredictRequest, RequestOptions

__all__ = ["Plan", "draw_seed", "make_plan", "needs_seed", "row_slices", "with_seed"]


RANDOMIZED_SETS = ("aps_randomized", "raps_randomized")
"""Set methods that draw keyed uniforms, so need a seed in deterministic mode too."""


def needs_seed(options: RequestOptions) -> bool:
    """Whether the request draws anything: MC masks, or a randomised conformal set's uniforms."""
    return options.mode is Mode.MC or (options.coverage is not None and options.set_method in RANDOMIZED_SETS)


_Options = TypeVar("_Options", RequestOptions, PredictRequest, AcquireRequest)


def with_seed(options: _Options) -> _Options:
    """``options`` with a seed: the given one, or one drawn here when the request draws anything
    (:func:`needs_seed`; an acquisition always samples).  The one place a request's seed is drawn; a file or a
    pool scored in parts shares it."""
    if options.seed is None and (isinstance(options, AcquireRequest) or needs_seed(options)):
        return options.model_copy(update={"seed": draw_seed()})
    return options


def draw_seed() -> int:
    """A fresh seed (63 bits from the operating system), for a door whose request names none: every door's
    draw goes through here."""
    return new_seed()


@dataclass(frozen=True)
class Plan:
    """One request, ready to run: nothing below the door draws or defaults anything.

    Attributes:
        request: the validated request, its ``seed`` set in MC mode.
        model: the served model's name (None at a door without a server: the server's default).
        max_samples: adaptive sampling's cap, resolved (None for fixed N, or at a door without a server).
        cost: the work in multiply-adds, rows x passes x the model's per pass (None without a server).
    """

    request: PredictRequest
    model: str | None = None
    max_samples: int | None = None
    cost: float | None = None

    @property
    def seed(self) -> int | None:
        return self.request.seed

    @property
    def mode(self) -> Mode:
        return self.request.mode

    @property
    def inputs(self) -> np.ndarray:
        """The rows. Shape: ``(B, D)``."""
        return self.request.inputs

    @property
    def adaptive(self) -> bool:
        """Whether the number of passes is decided while sampling (``tolerance`` or ``stop``)."""
        return self.request.mode is Mode.MC and (self.request.tolerance is not None or self.request.stop is not None)

    @property
    def first_round(self) -> int:
        """Passes of the first round: ``n_samples`` (at least ``MIN_ADAPTIVE_SAMPLES`` with ``tolerance``)."""
        if self.request.tolerance is not None:
            return max(self.request.n_samples, MIN_ADAPTIVE_SAMPLES)
        return self.request.n_samples

    @property
    def passes(self) -> int:
        """The most passes a row may take: 1 (deterministic), ``n_samples``, or the adaptive cap."""
        if self.request.mode is Mode.DETERMINISTIC:
            return 1
        if self.adaptive:
            return self.max_samples or self.request.max_samples or self.first_round
        return self.request.n_samples

    def __len__(self) -> int:
        return len(self.request.inputs)

    def rows(self, start: int, stop: int) -> Plan:
        """Rows ``start:stop`` as a plan of their own (same seed, ``row_offset`` shifted, cost in proportion)."""
        n = len(self)
        sub = self.request.model_copy(update={"inputs": self.request.inputs[start:stop],
                                              "row_offset": self.request.row_offset + start})
        cost = None if self.cost is None or n == 0 else self.cost * (min(stop, n) - start) / n
        return replace(self, request=sub, cost=cost)

    def slices(self, step: int) -> Iterator[Plan]:
        """Consecutive slices of at most ``step`` rows."""
        for start, stop in row_slices(len(self), step):
            yield self.rows(start, stop)


def row_slices(n: int, step: int) -> list[tuple[int, int]]:
    """``[(0, step), (step, 2 step), ..., (k step, n)]``: ``n`` rows in slices of at most ``step``."""
    step = max(1, int(step))
    return [(r, min(n, r + step)) for r in range(0, n, step)]


def make_plan(request: PredictRequest, *, model: str | None = None, max_samples: int | None = None) -> Plan:
    """The plan of a validated request: its seed drawn (:func:`with_seed`) and the adaptive cap resolved against
    the server's ``max_samples`` (a request's own ``max_samples`` wins)."""
    seeded = with_seed(request)
    plan = Plan(seeded, model)
    return replace(plan, max_samples=seeded.max_samples or max_samples) if plan.adaptive else plan
