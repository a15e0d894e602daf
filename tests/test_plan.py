"""The plan: a request made immutable at its door; the seed is drawn there and nowhere below it."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest

from mcdrop import plan as plan_module
from mcdrop.plan import Plan, make_plan, needs_seed, row_slices, with_seed
from mcdrop.request import MIN_ADAPTIVE_SAMPLES
from mcdrop.schemas import AcquireRequest, Limits, PredictRequest, RequestOptions
from tests.tiny_models import write_tiny_models
from tests.tolerances import assert_probabilities_close


def request(rows: int = 5, **kw) -> PredictRequest:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / (rows * 4)
    return PredictRequest.model_validate({"inputs": x, **kw}, strict=False)


@pytest.fixture
def draws(monkeypatch):
    """Count the seeds drawn (every door draws through mcdrop.plan.draw_seed)."""
    count = [0]
    real = plan_module.new_seed

    def counted() -> int:
        count[0] += 1
        return real()

    monkeypatch.setattr(plan_module, "new_seed", counted)
    return count


def test_the_plan_module_imports_no_torch():
    """The client's door uses the plan: it must stay torch-free."""
    import subprocess

    code = "import mcdrop.plan, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_seed_is_drawn_only_when_the_request_draws_anything(draws):
    assert with_seed(RequestOptions(mode="deterministic")).seed is None
    assert with_seed(RequestOptions(seed=7)).seed == 7
    assert draws[0] == 0
    drawn = with_seed(RequestOptions()).seed
    assert drawn is not None and 0 <= drawn < 2**63 and draws[0] == 1
    # a randomised conformal set draws uniforms even in deterministic mode
    options = RequestOptions(mode="deterministic", coverage=0.9, set_method="aps_randomized")
    assert needs_seed(options) and with_seed(options).seed is not None
    assert not needs_seed(RequestOptions(mode="deterministic", coverage=0.9, set_method="aps"))
    pool = AcquireRequest.model_validate({"inputs": [[0.0] * 4], "k": 1}, strict=False)
    assert with_seed(pool).seed is not None  # an acquisition always samples


def test_two_doors_draw_two_different_seeds():
    seeds = {make_plan(request()).seed for _ in range(8)}
    assert len(seeds) == 8


def test_slices_keep_the_seed_and_shift_the_row_positions():
    whole = make_plan(request(10, seed=3))
    parts = list(whole.slices(4))
    assert [len(p) for p in parts] == [4, 4, 2]
    assert [p.request.row_offset for p in parts] == [0, 4, 8]
    assert {p.seed for p in parts} == {3}
    np.testing.assert_array_equal(np.concatenate([p.inputs for p in parts]), whole.inputs)
    shifted = make_plan(request(10, seed=3, row_offset=100)).rows(6, 10)
    assert shifted.request.row_offset == 106 and len(shifted) == 4


def test_a_slice_costs_its_share_of_the_plan():
    from dataclasses import replace

    whole = replace(make_plan(request(10)), cost=1000.0)
    assert sum(p.cost for p in whole.slices(3)) == pytest.approx(1000.0)
    assert whole.rows(0, 5).cost == pytest.approx(500.0)


@pytest.mark.parametrize(("n", "step", "want"), [(0, 3, []), (1, 3, [(0, 1)]), (7, 3, [(0, 3), (3, 6), (6, 7)]),
                                                 (6, 3, [(0, 3), (3, 6)]), (5, 0, [(i, i + 1) for i in range(5)])])
def test_row_slices_cover_the_rows_once_in_order(n, step, want):
    assert row_slices(n, step) == want


def test_the_adaptive_cap_is_resolved_once_at_the_door():
    fixed = make_plan(request(n_samples=30), max_samples=500)
    assert fixed.max_samples is None and fixed.passes == 30
    adaptive = make_plan(request(tolerance=0.01, n_samples=4), max_samples=500)
    assert adaptive.max_samples == 500 and adaptive.passes == 500
    assert adaptive.first_round == MIN_ADAPTIVE_SAMPLES  # at least 8 passes before the standard error is trusted
    own = make_plan(request(tolerance=0.01, max_samples=64), max_samples=500)
    assert own.max_samples == 64
    stop = make_plan(request(stop="decision"), max_samples=300)
    assert stop.adaptive and stop.max_samples == 300
    assert make_plan(request(mode="deterministic")).passes == 1


def test_a_plan_is_immutable():
    plan = make_plan(request())
    with pytest.raises(AttributeError):
        plan.cost = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------ the walk of a seed from the door to the RNG


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from mcdrop.serving.predictor import Predictor

    paths = write_tiny_models(tmp_path_factory.mktemp("models"))
    return Predictor([str(paths["tiny-cls"])], limits=Limits(max_rows=4096, max_samples=100_000))


def test_a_sliced_request_draws_one_seed_and_its_answer_carries_it(predictor, draws):
    """The scheduler slices a large request (slices of ~2 rows here); the seed is drawn once, at the door."""
    from mcdrop.serving.scheduler import Scheduler

    scheduler = Scheduler(predictor, slice_cost=2 * 20 * 112)
    try:
        big = request(12, n_samples=20)
        answer = asyncio.run(scheduler.submit(big))
    finally:
        scheduler.close()
    assert draws[0] == 1 and answer.seed is not None and len(answer) == 12
    again = predictor.predict(request(12, n_samples=20, seed=answer.seed))
    assert_probabilities_close(again.probabilities, answer.probabilities)  # sliced vs whole: float32 rounding
    assert draws[0] == 1


def test_below_the_door_nothing_draws_a_seed(predictor, monkeypatch):
    """A plan runs through the scheduler and the predictor with the seed it was given: every seed-drawing
    function is made to fail below the door."""
    from mcdrop.sampling import rng
    from mcdrop.serving.scheduler import Scheduler
    from mcdrop.uncertainty import prediction

    plan = predictor.plan(request(6, n_samples=10))

    def forbidden() -> int:
        raise AssertionError("a seed was drawn below the door")

    monkeypatch.setattr(plan_module, "new_seed", forbidden)
    monkeypatch.setattr(rng, "new_seed", forbidden)
    monkeypatch.setattr(prediction, "new_seed", forbidden)
    scheduler = Scheduler(predictor, slice_cost=3 * 11 * 112)
    try:
        answer = asyncio.run(scheduler.submit(plan))
    finally:
        scheduler.close()
    assert answer.seed == plan.seed and isinstance(plan, Plan)


def test_the_constructor_only_loads_warm_up_is_explicit(tmp_path):
    from mcdrop.serving.predictor import Predictor

    paths = write_tiny_models(tmp_path)
    fresh = Predictor([str(paths["tiny-cls"])])
    served = fresh.served()
    assert served.rate == 0.0 and fresh._rate is None and not served.engine._plan_built
    assert fresh.rate > 0 and served.rate == fresh.rate  # measured on first use
