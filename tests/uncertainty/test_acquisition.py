"""Acquisition scores against brute-force implementations on tiny pools (baal is not installed here)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from mcdrop.uncertainty.acquisition import TopK, acquire, batchbald, keyed_scores, scores
from tests.conftest import ALPHA


def pool(s: int = 6, b: int = 5, c: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((s, b, c), generator=gen).mul(2.0).softmax(-1).double()


def brute_mi(p: np.ndarray, batch: list[int]) -> float:
    """I[y_batch; w] by enumerating every label configuration of the batch."""
    s, _, c = p.shape
    joint_h = 0.0
    for config in itertools.product(range(c), repeat=len(batch)):
        q = np.mean([np.prod([p[j, i, y] for i, y in zip(batch, config, strict=True)]) for j in range(s)])
        joint_h -= q * math.log(q)
    cond = sum(-np.mean([sum(p[j, i, y] * math.log(p[j, i, y]) for y in range(c)) for j in range(s)]) for i in batch)
    return joint_h - cond


def test_bald_entropy_margin_against_loops():
    p = pool()
    a = p.numpy()
    for i in range(a.shape[1]):
        mean = a[:, i].mean(0)
        h = -sum(m * math.log(m) for m in mean)
        assert scores(p, "entropy")[i] == pytest.approx(h, abs=1e-12)
        assert scores(p, "bald")[i] == pytest.approx(brute_mi(a, [i]), abs=1e-12)
        top = sorted(mean)[::-1]
        assert scores(p, "margin")[i] == pytest.approx(1 - (top[0] - top[1]), abs=1e-12)


def test_batchbald_equals_brute_force_greedy():
    p = pool(s=8, b=6, c=3, seed=1)
    a = p.numpy()
    got = batchbald(p, 4)
    chosen: list[int] = []
    for step in range(4):
        gains = {i: brute_mi(a, [*chosen, i]) for i in range(6) if i not in chosen}
        best = max(gains, key=lambda i: (gains[i], -i))
        chosen.append(best)
        assert int(got.indices[step]) == best
        assert float(got.scores[step]) == pytest.approx(gains[best], abs=1e-9)
    assert got.indices[0] == torch.argmax(scores(p, "bald"))  # a batch of one: BALD


def test_batchbald_skips_a_duplicate_that_bald_takes():
    p = pool(s=10, b=4, c=3, seed=2)
    top = int(torch.argmax(scores(p, "bald")))
    p = torch.cat([p, p[:, top:top + 1]], 1)  # row 4 repeats the best row: no new information
    bald = acquire(p, 2, "bald")
    assert set(bald.indices.tolist()) == {top, 4}
    bb = acquire(p, 2, "batchbald")
    assert len({top, 4} & set(bb.indices.tolist())) == 1


def test_sampled_joint_entropy_estimates_the_exact_value():
    """max_configs=1 samples configurations from the second pick on; M = 20000 draws put the estimate of
    I[y_A; w] within 0.05 nats (the per-draw terms are bounded by |A| log C = 3.3, standard error < 0.025)."""
    p = pool(s=8, b=6, c=3, seed=3)
    got = batchbald(p, 3, max_configs=1, n_configs=20000, seed=5)
    for step in range(3):
        exact = brute_mi(p.numpy(), got.indices[: step + 1].tolist())
        assert float(got.scores[step]) == pytest.approx(exact, abs=0.05)


def test_random_is_keyed_uniform_and_chunking_free():
    rows = torch.arange(20000)
    u = keyed_scores(3, rows).numpy()
    assert stats.kstest(u, "uniform").pvalue > ALPHA
    assert torch.equal(keyed_scores(3, rows[5:9]), keyed_scores(3, rows)[5:9])
    assert not torch.equal(keyed_scores(4, rows[:10]), keyed_scores(3, rows[:10]))


def test_topk_over_chunks_equals_one_pass():
    p = pool(s=5, b=40, c=4, seed=4)
    whole = acquire(p, 7, "entropy")
    top = TopK(7)
    for r0 in range(0, 40, 6):
        top.push(scores(p[:, r0:r0 + 6], "entropy"), torch.arange(r0, min(40, r0 + 6)))
    assert torch.equal(top.result().indices, whole.indices)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="method has to be one of"):
        acquire(pool(), 2, "bold")
    with pytest.raises(ValueError, match="k has to be between 1 and the pool's 5 rows"):
        acquire(pool(), 6, "bald")
