"""Selective prediction: when to abstain, from held-out (uncertainty, error) pairs.

An input is answered when its uncertainty ``u`` (``1 -`` the confidence of the predicted class) is at most a
threshold ``t``; the selective risk is the error rate among answered inputs, the coverage the share answered.

* :func:`risk_threshold`: the largest ``t`` whose answered calibration inputs have a selective risk whose
  one-sided Clopper-Pearson upper bound (confidence ``1 - delta``) is at most the target: a plug-in choice
  made conservative by the bound (Geifman & El-Yaniv 2017 pick ``t`` the same way, with a union bound over
  their binary search).
* :func:`coverage_threshold`: the ``c``-quantile of the calibration uncertainties, so about ``c`` of inputs like
  them are answered.
* :func:`risk_coverage`: the curve of selective risk against coverage, for reports and cards.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["coverage_threshold", "risk_coverage", "risk_threshold"]


def _sorted(uncertainty: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(uncertainty, kind="stable")
    return np.asarray(uncertainty, dtype=np.float64)[order], np.asarray(errors, dtype=np.float64)[order]


def risk_threshold(uncertainty: np.ndarray, errors: np.ndarray, risk: float, delta: float = 0.05) -> float:
    """Largest threshold whose answered set's risk bound is ``<= risk``; ``-inf`` (answer nothing) if none is.

    Shapes: ``(n,)`` uncertainties and ``(n,)`` 0/1 errors of calibration inputs.
    """
    u, e = _sorted(uncertainty, errors)
    answered = np.arange(1, len(u) + 1)
    wrong = np.cumsum(e)
    upper = stats.beta.ppf(1 - delta, wrong + 1, answered - wrong)  # Clopper-Pearson one-sided upper bound
    last = np.r_[u[1:] != u[:-1], True]  # a threshold admits every tied uncertainty at once
    ok = np.flatnonzero((upper <= risk) & last)
    return float(u[ok[-1]]) if len(ok) else -math.inf


def coverage_threshold(uncertainty: np.ndarray, coverage: float) -> float:
    """The threshold answering a share ``coverage`` of inputs distributed like the calibration ones."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage has to be in (0, 1], but got {coverage}")
    u = np.sort(np.asarray(uncertainty, dtype=np.float64))
    k = max(1, math.ceil(round(coverage * len(u), 9)))
    return float(u[k - 1])


def risk_coverage(uncertainty: np.ndarray, errors: np.ndarray, points: int = 21) -> list[tuple[float, float, float]]:
    """(coverage, selective risk, threshold) at ``points`` evenly spaced coverages in (0, 1]."""
    u, e = _sorted(uncertainty, errors)
    out = []
    for c in np.linspace(1.0 / points, 1.0, points):
        k = max(1, math.ceil(round(c * len(u), 9)))
        out.append((float(k / len(u)), float(e[:k].mean()), float(u[k - 1])))
    return out
