"""Stop sampling a row when its decisions are settled: anytime-valid betting tests on the mean class probabilities.

A classifier's answer decides from the mean probabilities ``p = mean_s p_s`` of its ``n`` passes: the class
``argmax_c p_c``; abstention on uncertainty ``max_c p_c < tau`` (:class:`DecisionRule`, ``confidence``); the
conformal set, LAC ``{c : p_c >= t}`` or APS/RAPS ``{c : score_c(p) <= q}``.  With more passes ``p`` tends to
``mu = E[p_s]``; a row stops when, with probability at least ``1 - delta`` for all rows' passes at once, the
decisions of ``mu`` are those of its current ``p``.

The evidence.  For each class ``c`` and each level ``m`` of a grid fixed in advance (the tenths, or those up to
1/2 when no APS/RAPS set is asked for, and the rule's thresholds), two test supermartingales over the passes
``X_i = p_{s_i, c}`` in [0, 1]:

    K+_n(m) = prod_i (1 + l_i (X_i - m)),  l_i in [0, 1/m)          (a test of H0: mu_c <= m)
    K-_n(m) = prod_i (1 - l_i (X_i - m)),  l_i in [0, 1/(1 - m))    (a test of H0: mu_c >= m)

with ``l_i`` chosen from passes before ``i`` (the predictable plug-in of Waudby-Smith & Ramdas, "Estimating
means of bounded random variables by betting", JRSS B 2024, eq. (26), capped at ``0.95`` of the range).
Under its null each is a nonnegative supermartingale, so by Ville's inequality it ever reaches ``1/a`` with
probability at most ``a``: a rejection holds at any stopping time, however the rounds are cut (anytime
validity).  The tests share ``delta`` by weighted Bonferroni: half to the ``C`` tests of ``mu_c > 1/2`` (which
settle a confident row's class alone, since the means sum to 1), a quarter to the rule's thresholds, a
quarter to the rest of the grid.  On the event that no true null is rejected (probability at least
``1 - delta``) every mean lies in its box ``(L_c, U_c)``: ``L_c`` the highest level whose K+ rejected, ``U_c``
the lowest whose K- rejected, tightened by ``sum_c mu_c = 1``.  A row is settled when every decision is
the same at every point of the hull of its box and its current ``p``; then the current decisions are those
of ``mu``.  A row that reaches the cap unsettled stops there.

Cost.  No valid test can settle faster than the data allow: a mean of [0, 1] values near 1 is told above
``m`` after about ``log(1/a) / log(1/m)`` passes at best, so a class (``m = 1/2``) needs at least about
``log2(2 C / delta)`` = 14 passes at ``delta = 1e-3``, and an abstention threshold ``tau`` near 1 needs far more
(``tau = 0.87``: about 70).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from mcdrop.uncertainty.summaries import mixture_interval

__all__ = ["INTERVAL_FRACTION", "DecisionRule", "DecisionTests", "interval_settled", "next_round", "settled"]

INTERVAL_FRACTION = 0.05
"""Regression: a row stops when each end of its prediction interval is known within this share of its width."""
CAP = 0.95
"""Bets use at most this share of their range (a single pass at the far end keeps 5% of the capital)."""
GRID = tuple(j / 10 for j in range(1, 10))


@dataclass(frozen=True)
class DecisionRule:
    """The decisions an answer makes from its mean probabilities ``p`` ``(B, C)``.

    Attributes:
        confidence: abstain (uncertain) when ``max_c p_c`` is below this (None: no abstention rule).
        set_method: ``lac``, ``aps`` or ``raps`` for a conformal set, None for none.
        set_threshold: the conformal threshold ``q`` on the set scores (:mod:`mcdrop.uncertainty.conformal`).
        u: the rows' uniforms for APS/RAPS. Shape: ``(B,)``.
        lam, k_reg: RAPS's penalty.
    """

    confidence: float | None = None
    set_method: str | None = None
    set_threshold: float | None = None
    u: Tensor | None = None
    lam: float = 0.0
    k_reg: int = 0

    @property
    def full_grid(self) -> bool:
        """Whether the decisions need every tenth (APS/RAPS sets sum several probabilities)."""
        return self.set_method in ("aps", "raps") and self.set_threshold is not None

    def levels(self) -> list[float]:
        """Probability levels the decisions compare with (LAC's ``1 - q``, the confidence threshold)."""
        out = []
        if self.confidence is not None and 0.0 < self.confidence < 1.0:
            out.append(float(self.confidence))
        if self.set_method == "lac" and self.set_threshold is not None and 0.0 < 1.0 - self.set_threshold < 1.0:
            out.append(1.0 - float(self.set_threshold))
        return out

    def select(self, index: Tensor) -> DecisionRule:
        """The rule of the rows ``index``."""
        u = self.u[index] if self.u is not None else None
        return DecisionRule(self.confidence, self.set_method, self.set_threshold, u, self.lam, self.k_reg)


class DecisionTests:
    """The betting tests of ``B`` rows x ``C`` classes (see the module docs); feed passes with :meth:`update`.

    Args:
        rows, classes: ``B`` and ``C``.
        delta: the chance that any row's box misses its mean, ever.
        levels: the rule's thresholds (:meth:`DecisionRule.levels`).
        full_grid: test every tenth; False: the tenths below 1/2 only (enough for a class and thresholds, whose
            levels are tested themselves; APS/RAPS sets need the whole grid).
    """

    def __init__(self, rows: int, classes: int, delta: float, levels: Sequence[float] = (),
                 full_grid: bool = True) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta has to be a probability in (0, 1), but got {delta}")
        base = GRID if full_grid else tuple(m for m in GRID if m <= 0.5)
        extra = sorted({round(m, 12) for m in levels} - set(base))
        grid = [*base, *extra]
        # (level, side, weight): side +1 tests mu > m, -1 tests mu < m
        half = [(0.5, 1, 0.5)]
        thresholds = [(m, side) for m in levels for side in (1, -1)]
        rest = [(m, side) for m in grid for side in (1, -1) if (m, side) != (0.5, 1) and (m, side) not in thresholds]
        share_thr = 0.25 if thresholds else 0.0
        tests = half + [(m, s, share_thr / len(thresholds)) for m, s in thresholds]
        tests += [(m, s, (0.5 - share_thr) / len(rest)) for m, s in rest]
        self.level = torch.tensor([t[0] for t in tests], dtype=torch.float64)
        self.side = torch.tensor([t[1] for t in tests], dtype=torch.float64)
        alpha = torch.tensor([delta * t[2] / classes for t in tests], dtype=torch.float64)
        self.log_target = torch.log(1.0 / alpha)  # (T,)
        self.root_target = torch.sqrt(self.log_target)
        self.max_bet = CAP / torch.where(self.side > 0, self.level, 1.0 - self.level)  # (T,)
        self.n = 0
        self.sum = torch.zeros((rows, classes), dtype=torch.float64)
        self.sq = torch.zeros((rows, classes), dtype=torch.float64)
        self.log_capital = torch.zeros((rows, classes, len(tests)), dtype=torch.float64)
        self.rejected = torch.zeros((rows, classes, len(tests)), dtype=torch.bool)

    def select(self, index: Tensor) -> None:
        """Keep only the rows ``index`` (those still open)."""
        self.sum, self.sq = self.sum[index], self.sq[index]
        self.log_capital, self.rejected = self.log_capital[index], self.rejected[index]

    def update(self, probs: Tensor) -> None:
        """Bet on passes ``probs`` of every open row, in order (vectorised over the passes: each bet uses the
        running mean and variance of the passes before it). Shape: ``(S, B, C)``."""
        x = probs.double()
        s = x.shape[0]
        i = torch.arange(self.n + 1, self.n + s + 1, dtype=torch.float64).view(-1, 1, 1)  # pass numbers
        total = self.sum + torch.cumsum(x, 0)  # sums up to and including each pass
        dev = (x - (0.5 + total) / (i + 1)) ** 2
        sq = self.sq + torch.cumsum(dev, 0) - dev  # before each pass
        root = torch.sqrt(2.0 / ((0.25 + sq) * torch.log1p(i))).unsqueeze(-1)  # sqrt(2 / (sigma^2_{i-1} i log(1+i)))
        bet = torch.minimum(root * self.root_target, self.max_bet)
        steps = torch.log1p(bet * self.side * (x.unsqueeze(-1) - self.level))  # (S, B, C, T)
        path = self.log_capital + torch.cumsum(steps, 0)
        self.rejected |= (path >= self.log_target).any(0)
        self.log_capital = path[-1]
        self.sum = total[-1]
        self.sq = self.sq + dev.sum(0)
        self.n += s

    @property
    def mean(self) -> Tensor:
        """Each open row's mean of the passes so far. Shape: ``(B, C)``."""
        return self.sum / max(self.n, 1)

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Each open row's box ``(L, U)`` for its mean probabilities. Shapes: ``(B, C)``, ``(B, C)``."""
        lower = torch.where(self.rejected & (self.side > 0), self.level, 0.0).amax(-1)
        upper = torch.where(self.rejected & (self.side < 0), self.level, 1.0).amin(-1)
        lo = torch.maximum(lower, 1.0 - (upper.sum(1, keepdim=True) - upper))  # sum_c mu_c = 1
        hi = torch.minimum(upper, 1.0 - (lower.sum(1, keepdim=True) - lower))
        return lo, hi


def settled(p: Tensor, lower: Tensor, upper: Tensor, rule: DecisionRule) -> Tensor:
    """Whether every decision of ``rule`` is the same over the hull of the box and ``p``.

    Shapes: p, lower, upper ``(B, C)`` -> ``(B,)`` bool.
    """
    p = p.double()
    lo, hi = torch.minimum(lower, p), torch.maximum(upper, p)
    top = p.argmax(1, keepdim=True)
    others = hi.scatter(1, top, -1.0)
    # a rejection at level m means mu > m (or mu < m) strictly, so a shared bound separates
    done = lo.gather(1, top).squeeze(1) >= others.amax(1)  # the class
    if rule.confidence is not None:
        tau = rule.confidence
        done &= (lo.gather(1, top).squeeze(1) >= tau) | (hi.amax(1) <= tau)
    if rule.set_method == "lac" and rule.set_threshold is not None:
        t = 1.0 - rule.set_threshold
        done &= ((lo >= t) | (hi <= t)).all(1)
    elif rule.set_method in ("aps", "raps") and rule.set_threshold is not None:
        done &= _aps_settled(lo, hi, rule)
    return done


def _aps_settled(lo: Tensor, hi: Tensor, rule: DecisionRule) -> Tensor:
    """APS/RAPS: a label's score ``sum_{j above y} p_j + u p_y (+ lam max(0, rank - k_reg))`` is at least the
    sum of ``L_j`` over labels surely above it and at most the sum of ``U_j`` over labels possibly above it."""
    assert rule.u is not None and rule.set_threshold is not None
    q = rule.set_threshold
    c = lo.shape[1]
    eye = torch.eye(c, dtype=torch.bool).unsqueeze(0)
    surely = (lo.unsqueeze(1) > hi.unsqueeze(2)) & ~eye  # [b, y, j]: j surely above y
    maybe = (hi.unsqueeze(1) >= lo.unsqueeze(2)) & ~eye
    u = rule.u.double().view(-1, 1)
    low = (surely * lo.unsqueeze(1)).sum(2) + u * lo
    high = torch.minimum((maybe * hi.unsqueeze(1)).sum(2), 1.0 - lo) + u * hi
    if rule.set_method == "raps":
        low = low + rule.lam * (1.0 + surely.sum(2) - rule.k_reg).clamp_min(0.0)
        high = high + rule.lam * (1.0 + maybe.sum(2) - rule.k_reg).clamp_min(0.0)
    return ((high <= q) | (low > q)).all(1)


def next_round(n: int, cap: int) -> int:
    """Passes after the round that follows ``n``: half as many more (at least 8), at most ``cap``: 8, 16, 24, 36,
    54, 81, ...  Fewer, larger rounds cost a few passes per row but fewer engine calls (each with a fixed cost)."""
    return min(cap, n + max(8, n // 2))


def interval_settled(means: Tensor, variances: Tensor | float, level: float, delta: float,
                     fraction: float = INTERVAL_FRACTION) -> Tensor:
    """Regression: whether both ends of each row's central interval of ``(1/S) sum_s N(mu_s, sigma_s^2)`` are known
    within ``fraction`` of its width, ``z_{1 - delta/4} se(q) <= fraction (high - low)`` for each end ``q``.

    An end solves ``G(q) = mean_s F_s(q) = a`` with ``F_s`` the CDF of pass ``s``; by the delta method its Monte
    Carlo standard error is ``se(q) = sd_s(F_s(q)) / (sqrt(S) g(q))``, ``g`` the mixture's density.  A normal
    approximation, not an anytime-valid bound (the passes' outputs are unbounded).

    Shapes: means ``(S, B)``, variances ``(S, B)`` or a number -> ``(B,)`` bool.
    """
    s = means.shape[0]
    if s < 2:
        return torch.zeros(means.shape[1], dtype=torch.bool)
    mu = means.double()
    var = torch.as_tensor(variances, dtype=torch.float64).expand_as(mu)
    sd = var.clamp_min(1e-300).sqrt()
    low, high = mixture_interval(mu, var, level)
    z = NormalDist().inv_cdf(1.0 - delta / 4.0)
    done = torch.ones(means.shape[1], dtype=torch.bool)
    for q in (low, high):
        u = (q.double() - mu) / sd
        density = (torch.exp(-0.5 * u * u) / (math.sqrt(2.0 * math.pi) * sd)).mean(0)
        se = torch.special.ndtr(u).std(0, correction=1) / (math.sqrt(s) * density.clamp_min(1e-300))
        done &= z * se <= fraction * (high - low).double()
    return done
