"""What to label next: acquisition scores of a pool from MC dropout samples, and the top ``k`` rows.

Scores of one row from its sampled class probabilities ``p_s`` (``s = 1..S``), ``p = mean_s p_s``:

* ``entropy``: ``H[p] = -sum_c p_c log p_c`` (max-entropy sampling);
* ``bald``: the mutual information ``I[y; w] = H[p] - mean_s H[p_s]`` (Houlsby et al. 2011; Gal et al. 2017);
* ``margin``: ``1 - (p_(1) - p_(2))``, one minus the gap between the two largest probabilities (Scheffer et al.
  2001), so that higher is always "label me first";
* ``random``: a uniform number keyed by (seed, row position), the same however the pool is chunked;
* ``batchbald``: greedy BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019).  The batch ``A`` grows one row at
  a time by the row ``b`` that maximises ``I[y_A, y_b; w] = H[y_A, y_b] - sum_{i in A + b} mean_s H[p_s(x_i)]``.
  The joint predictive ``p(y_A) = mean_s prod_{i in A} p_s(y_i | x_i)`` needs the *same* network ``s`` for every
  row: the samples must come from the consistent-mask mode (``MCEngine.sample(..., consistent=True)``).  While
  the batch's label configurations number at most ``max_configs`` the joint entropy is exact; beyond, ``M =
  max_configs`` configurations ``y_A^(m)`` are drawn from ``p(y_A)`` (a network ``s_m`` uniformly, then each label
  from ``p_{s_m}``) and ``H[y_A, y_b] ~ -(1/M) sum_m sum_y p(y_A^(m), y) / p(y_A^(m)) log p(y_A^(m), y)``, the
  paper's importance estimate.  A row's reported score is the BatchBALD value of the batch up to and including it
  (so scores rise with rank, by at most the row's BALD score per step).

Ties in the top ``k`` go to the lower row index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mcdrop.sampling import rng

if TYPE_CHECKING:
    from mcdrop.sampling.engine import MCEngine

__all__ = ["METHODS", "Acquisition", "TopK", "acquire", "acquire_pool", "batchbald", "keyed_scores", "scores"]

METHODS = ("bald", "batchbald", "entropy", "margin", "random")
"""The acquisition functions :func:`acquire` knows."""
MAX_CONFIGS = 1000
"""BatchBALD's exact-joint limit and number of sampled configurations beyond it."""
_STREAM = (1 << 20, 1)  # a stream no dropout layer (and not conformal's uniforms) uses


@dataclass(frozen=True)
class Acquisition:
    """The rows to label next, best first: ``indices`` (pool row positions, ``(k,)`` int64) and their
    ``scores`` (``(k,)`` float64)."""

    indices: Tensor
    scores: Tensor


def _entropy(p: Tensor) -> Tensor:
    """:func:`mcdrop.uncertainty.summaries.entropy` on probabilities: ``-sum_c p_c log p_c``. Shape: ``(*, C)`` -> ``(*)``."""
    return torch.special.entr(p).sum(-1)


def scores(probs: Tensor, method: str, *, seed: int = 0, rows: Tensor | None = None) -> Tensor:
    """One score per row (higher: label it first) for a per-row method.

    Args:
        probs: sampled class probabilities. Shape: ``(S, B, C)``.
        method: ``bald``, ``entropy``, ``margin`` or ``random``.
        seed, rows: ``random``'s key and the rows' positions in the pool (default ``0..B-1``). Shape: ``(B,)``.

    Returns:
        float64 scores. Shape: ``(B,)``.
    """
    if probs.dim() != 3:
        raise ValueError(f"probs has to be sampled class probabilities (S, B, C), but got shape {tuple(probs.shape)}")
    p = probs.double()
    mean = p.mean(0)
    if method == "entropy":
        return _entropy(mean)
    if method == "bald":
        return (_entropy(mean) - _entropy(p).mean(0)).clamp_min(0.0)
    if method == "margin":
        top = mean.topk(min(2, mean.shape[1]), dim=1).values
        return 1.0 - (top[:, 0] - top[:, 1]) if top.shape[1] > 1 else torch.zeros(mean.shape[0], dtype=torch.float64)
    if method == "random":
        rows = torch.arange(p.shape[1], dtype=torch.int64) if rows is None else rows
        return keyed_scores(seed, rows)
    raise ValueError(f"method has to be one of bald, entropy, margin, random (batchbald needs acquire()), but got {method!r}")


def keyed_scores(seed: int, rows: Tensor) -> Tensor:
    """A uniform number in [0, 1) per row position, keyed by (seed, row). Shape: ``(B,)`` -> ``(B,)`` float64."""
    keys = rng.stream_keys(rng.seed_key(int(seed)), _STREAM, rows.to(torch.int64), torch.zeros(1, dtype=torch.int64))
    return ((rng.random_words(keys, 1)[0, :, 0] >> 11) & ((1 << 53) - 1)).double() * 2.0**-53


def batchbald(probs: Tensor, k: int, *, seed: int = 0, max_configs: int = MAX_CONFIGS,
              n_configs: int | None = None) -> Acquisition:
    """Greedy BatchBALD (see the module docs) on consistent samples.

    Args:
        probs: class probabilities of the pool under ``S`` networks, each applied to every row. Shape: ``(S, B, C)``.
        k: batch size (at most ``B``).
        seed: draws the sampled configurations (used only beyond ``max_configs``).
        max_configs: exact joint entropy while the batch has at most this many label configurations.
        n_configs: configurations sampled beyond that (default ``max_configs``).
    """
    s, b, c = probs.shape
    n_configs = max_configs if n_configs is None else n_configs
    if not 1 <= k <= b:
        raise ValueError(f"k has to be between 1 and the pool's {b} rows, but got {k}")
    p = probs.double().clamp_min(1e-30)
    cond = _entropy(p).mean(0)  # (B,): mean_s H[p_s(x_b)]
    gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    joint = torch.ones((s, 1), dtype=torch.float64)  # (S, M): prod over the batch of p_s(y_i^(m))
    weight = torch.ones(1, dtype=torch.float64)  # (M,): p(y^(m)) (exact) or 1/M (sampled), times 1/p(y^(m))
    nets: Tensor | None = None  # (M,) the network of each sampled configuration
    labels = torch.empty((0, 0), dtype=torch.int64)  # (M, |A|) the sampled configurations
    chosen: list[int] = []
    values: list[float] = []
    cond_sum = 0.0
    free = torch.ones(b, dtype=torch.bool)
    for _ in range(k):
        pj = torch.einsum("sm,sbc->mbc", joint, p) / s  # (M, B, C) p(y^(m), y_b)
        h = -(weight.view(-1, 1, 1) * pj * torch.log(pj.clamp_min(1e-300))).sum((0, 2))  # (B,)
        gain = h - cond - cond_sum
        gain[~free] = -math.inf
        best = int(torch.argmax(gain))
        chosen.append(best)
        values.append(float(gain[best]))
        free[best] = False
        cond_sum += float(cond[best])
        m = joint.shape[1]
        if nets is None and m * c <= max_configs:  # exact: every configuration, weight p(y^(m))
            joint = (joint.unsqueeze(2) * p[:, best].unsqueeze(1)).reshape(s, m * c)
            weight = torch.ones(m * c, dtype=torch.float64)
            continue
        if nets is None:  # switch to sampled configurations of the batch so far
            nets = torch.randint(0, s, (n_configs,), generator=gen)
            labels = torch.stack([torch.multinomial(p[nets, i], 1, generator=gen).squeeze(1) for i in chosen[:-1]], 1) \
                if len(chosen) > 1 else torch.empty((n_configs, 0), dtype=torch.int64)
        new = torch.multinomial(p[nets, best], 1, generator=gen)
        labels = torch.cat([labels, new], 1)
        idx = torch.tensor(chosen)
        joint = p[:, idx.view(1, -1), labels].prod(-1)  # (S, M)
        weight = 1.0 / (n_configs * joint.mean(0).clamp_min(1e-300))
    return Acquisition(torch.tensor(chosen, dtype=torch.int64), torch.tensor(values, dtype=torch.float64))


def acquire(probs: Tensor, k: int, method: str, *, seed: int = 0, rows: Tensor | None = None,
            max_configs: int = MAX_CONFIGS) -> Acquisition:
    """The ``k`` rows of a pool to label next by ``method`` (:data:`METHODS`), best first.

    Shape: probs ``(S, B, C)`` (consistent samples for ``batchbald``); rows ``(B,)`` the positions reported
    (default ``0..B-1``).
    """
    b = probs.shape[1]
    rows = torch.arange(b, dtype=torch.int64) if rows is None else rows.to(torch.int64)
    if method == "batchbald":
        got = batchbald(probs, k, seed=seed, max_configs=max_configs)
        return Acquisition(rows[got.indices], got.scores)
    if method not in METHODS:
        raise ValueError(f"method has to be one of {', '.join(METHODS)}, but got {method!r}")
    if not 1 <= k <= b:
        raise ValueError(f"k has to be between 1 and the pool's {b} rows, but got {k}")
    top = TopK(k)
    top.push(scores(probs, method, seed=seed, rows=rows), rows)
    return top.result()


class TopK:
    """The ``k`` highest scores seen over chunks of a pool (ties to the lower row), for streaming."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"k has to be a positive number of rows, but got {k}")
        self.k = k
        self._scores = torch.empty(0, dtype=torch.float64)
        self._rows = torch.empty(0, dtype=torch.int64)

    def push(self, scores: Tensor, rows: Tensor) -> None:
        """Add one chunk. Shapes: ``(B,)``, ``(B,)``."""
        s = torch.cat([self._scores, scores.double()])
        r = torch.cat([self._rows, rows.to(torch.int64)])
        order = torch.argsort(r, stable=True)  # lower rows first, then a stable sort by score keeps them first
        s, r = s[order], r[order]
        keep = torch.argsort(s, descending=True, stable=True)[: self.k]
        self._scores, self._rows = s[keep], r[keep]

    @property
    def seen(self) -> int:
        return int(self._rows.numel())

    def result(self) -> Acquisition:
        return Acquisition(self._rows.clone(), self._scores.clone())


def acquire_pool(engine: MCEngine, chunks: Iterable[Tensor], k: int, method: str, *, n_samples: int, seed: int,
                 max_configs: int = MAX_CONFIGS, cancelled: Callable[[], bool] | None = None) -> Acquisition:
    """The ``k`` rows to label next of a pool read in chunks (rows numbered from 0 across chunks), best first.

    Every chunk gets ``n_samples`` passes with consistent masks (so chunking changes nothing); per-row methods
    keep only a running top ``k``, ``batchbald`` keeps the pool's probabilities (``S x rows x C`` float32) and
    selects at the end; ``random`` runs no passes.  Shape: each chunk ``(B_i, *)`` of a classifier's inputs.
    """
    if method not in METHODS:
        raise ValueError(f"method has to be one of {', '.join(METHODS)}, but got {method!r}")
    top = TopK(k)
    kept: list[Tensor] = []
    start = 0
    for x in chunks:
        rows = torch.arange(start, start + x.shape[0], dtype=torch.int64)
        start += x.shape[0]
        if method == "random":
            top.push(keyed_scores(seed, rows), rows)
            continue
        probs = engine.sample(x, n_samples, seed=seed, consistent=True, cancelled=cancelled).float().softmax(-1).cpu()
        if method == "batchbald":
            kept.append(probs)
        else:
            top.push(scores(probs, method), rows)
    if not 1 <= k <= start:
        raise ValueError(f"k has to be between 1 and the pool's {start} rows, but got {k}")
    if method == "batchbald":
        return batchbald(torch.cat(kept, 1), k, seed=seed, max_configs=max_configs)
    return top.result()
