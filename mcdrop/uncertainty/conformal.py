"""Split-conformal prediction sets (classification) and intervals (regression).

Given ``n`` calibration scores ``s_i`` of inputs the model was not fitted on, the conformal threshold at
coverage ``1 - a`` is ``q = s_(k)``, the ``k = ceil((n + 1)(1 - a))``-th smallest (infinite when ``k > n``).  A
test input's set holds every label whose score is ``<= q``.  If the scores are exchangeable,
``P(y in set) >= 1 - a`` (the test score is at most the ``k``-th of ``n + 1`` with probability ``>= k / (n + 1)``;
ties only add to it); without ties also ``P(y in set) <= 1 - a + 1 / (n + 1)`` (Vovk et al. 2005; Angelopoulos &
Bates 2021).  Storing the sorted scores rather than one quantile answers any coverage.

Scores for a label ``y`` of probability vector ``p``:

* ``lac``: ``1 - p_y`` (least ambiguous set-valued classifier, Sadinle et al. 2019; smallest sets);
* ``aps``: ``sum_{j ranked above y} p_j``, the probability mass ranked strictly above ``y`` (adaptive prediction
  sets, Romano et al. 2020, non-randomised: their score with ``u = 0``); the set is the top classes taken in
  order until their mass exceeds ``q``, the class that crosses it included;
* ``raps``: ``aps + lam * max(0, rank_y - k_reg)`` with ``rank_y`` the 1-based rank of ``y`` (regularised APS,
  Angelopoulos et al. 2021; shorter tails of unlikely labels);
* ``aps_randomized``, ``raps_randomized``: the same plus ``u p_y`` with ``u`` uniform in [0, 1), one per input
  (Romano et al.'s randomised score).

The sets of ``lac``, ``aps`` and ``raps`` always hold the top class (:func:`prediction_sets` adds it; for ``aps``
its score is 0, so it is in anyway): they are never empty and, being supersets of the conformal sets, still
cover with probability ``>= 1 - a`` (only the upper bound is lost; a level below the model's accuracy gives the
top class alone, which covers at the accuracy).  The randomised sets hit the level more exactly by leaving some
inputs with an **empty set**: that is a coin the method tossed to spend its error budget, not a statement that
no class fits the input (a confident input is as likely to get one as a doubtful one).

The uniforms are keyed by (seed, row position) like the dropout masks (:func:`keyed_uniforms`), so a seeded
request gets the same set however it was batched.  Regression uses the normalised score ``|y - mu| / sigma``
with ``sigma`` the predictive standard deviation: the interval is ``mu +- q sigma`` (Lei et al. 2018).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mcdrop.sampling import rng

__all__ = ["METHODS", "RANDOMIZED", "RAPS_K_REG", "RAPS_LAMBDA", "conformal_quantile", "coverage_interval",
           "keyed_uniforms", "label_scores", "prediction_sets", "set_scores"]

METHODS = ("lac", "aps", "raps", "aps_randomized", "raps_randomized")
RANDOMIZED = ("aps_randomized", "raps_randomized")
"""The methods that need one uniform per input (:func:`keyed_uniforms`) and whose sets may be empty."""
RAPS_LAMBDA = 0.01
RAPS_K_REG = 2
_STREAM = (1 << 20, 0)  # a stream no dropout layer uses


def conformal_quantile(sorted_scores: np.ndarray | Tensor, coverage: float) -> float:
    """``s_(k)`` with ``k = ceil((n + 1) coverage)``; ``inf`` when ``k > n``. ``sorted_scores`` ascending, ``(n,)``."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage has to be in (0, 1), but got {coverage}")
    n = len(sorted_scores)
    k = math.ceil(round((n + 1) * coverage, 9))
    return math.inf if k > n else float(sorted_scores[k - 1])


def coverage_interval(n_test: int, n_cal: int, coverage: float, alpha: float = 1e-3) -> tuple[float, float]:
    """Where the empirical coverage of ``n_test`` new inputs falls with probability ``1 - alpha``.

    With ``l = floor((n_cal + 1)(1 - coverage))``, the coverage given the calibration set is
    ``Beta(n_cal + 1 - l, l)`` (continuous scores, exchangeable data; Vovk 2012), so the number of covered
    test inputs is beta-binomial; its mean lies in ``[coverage, coverage + 1 / (n_cal + 1)]``.
    """
    from scipy import stats

    l_ = math.floor((n_cal + 1) * (1 - coverage))
    if l_ < 1:
        return 1.0, 1.0  # the threshold is infinite: every set holds every label
    dist = stats.betabinom(n_test, n_cal + 1 - l_, l_)
    return float(dist.ppf(alpha / 2) / n_test), float(dist.ppf(1 - alpha / 2) / n_test)


def keyed_uniforms(seed: int | Tensor, rows: Tensor) -> Tensor:
    """One uniform in [0, 1) per row, from (seed, row position). Shapes: seed int or ``(B,)``, rows ``(B,)`` -> ``(B,)``."""
    key = rng.seed_keys(seed) if isinstance(seed, Tensor) else rng.seed_key(int(seed))
    words = rng.random_words(rng.stream_keys(key, _STREAM, rows.to(torch.int64), torch.zeros(1, dtype=torch.int64)), 1)
    return ((words[0, :, 0] >> 11) & ((1 << 53) - 1)).double() * 2.0**-53


def set_scores(probs: Tensor, method: str, u: Tensor | None = None, lam: float = RAPS_LAMBDA,
               k_reg: int = RAPS_K_REG) -> Tensor:
    """The conformal score of every candidate label (``u`` is used by the randomised methods only).

    Shapes: probs ``(B, C)``, u ``(B,)`` -> ``(B, C)`` float64.
    """
    p = probs.double()
    if method == "lac":
        return 1.0 - p
    if method not in METHODS:
        raise ValueError(f"method has to be one of {', '.join(METHODS)}, but got {method!r}")
    if method in RANDOMIZED and u is None:
        raise ValueError(f"{method} needs one uniform per input (keyed_uniforms)")
    order = torch.argsort(p, dim=1, descending=True, stable=True)
    sorted_p = torch.gather(p, 1, order)
    scores_sorted = torch.cumsum(sorted_p, 1).roll(1, 1)  # mass ranked strictly above each position
    scores_sorted[:, 0] = 0.0
    if method in RANDOMIZED:
        scores_sorted = scores_sorted + u.double().unsqueeze(1) * sorted_p  # type: ignore[union-attr]
    if method.startswith("raps"):
        rank = torch.arange(1, p.shape[1] + 1, dtype=torch.float64).unsqueeze(0)
        scores_sorted = scores_sorted + lam * (rank - k_reg).clamp_min(0.0)
    return torch.empty_like(p).scatter_(1, order, scores_sorted)


def prediction_sets(probs: Tensor, method: str, q: float, u: Tensor | None = None, lam: float = RAPS_LAMBDA,
                    k_reg: int = RAPS_K_REG) -> Tensor:
    """The sets at threshold ``q``: labels scoring ``<= q``, plus the top class unless ``method`` is randomised.

    Shapes: probs ``(B, C)``, u ``(B,)`` -> ``(B, C)`` bool.
    """
    sets = set_scores(probs, method, u, lam, k_reg) <= q
    if method not in RANDOMIZED:
        sets.scatter_(1, probs.argmax(1, keepdim=True), True)
    return sets


def label_scores(probs: Tensor, labels: Tensor, method: str, u: Tensor | None = None) -> Tensor:
    """The score of the true label of each calibration input. Shape: ``(B, C)``, ``(B,)`` -> ``(B,)``."""
    return set_scores(probs, method, u).gather(1, labels.view(-1, 1)).squeeze(1)
