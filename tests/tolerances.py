"""How closely results may be compared, by where they were computed (README, "Reproducibility").

Masks are integer hashes of (seed, row, sample, layer): the same bits on every machine.  What differs
between code paths is float32 rounding in the network's sums.  A ``K``-term float32 dot product summed in
another order (other BLAS blocking, SIMD width, thread split, a one-row gemv instead of a gemm) typically
moves by about ``sqrt(K) * eps32`` relative to its terms: 2e-6 for ``K = 1024``, and a three-layer network
compounds a few of those.  Measured: 7e-7 at most on the shipped classifier's logits between a batch and one
row alone; 3e-6 relative on mutual information between two machines.  The promise allows ~10x that:

* ``SAME_CALL``: the same call in the same process (same rows, batch, N, chunking, threads): bit-identical.
* ``PROBABILITY_ATOL`` (1e-5): probabilities, confidences, entropies, mutual information and other
  quantities of order 1, across batch compositions, chunk sizes, thread counts, processes and CPUs.
* ``OUTPUT_RTOL`` (1e-5, relative to the row's largest output, never below ``OUTPUT_ATOL``): raw outputs
  (logits, regression means, variances, interval bounds).
* Discrete results (the predicted class, votes, a conformal set, an abstention) agree except where the
  deciding quantities lie within the tolerance of a tie or threshold; metrics over N inputs (accuracy, ECE,
  coverage) therefore move by at most (inputs near a tie or bin edge) / N, plus the tolerance:
  :func:`classification_metric_bounds`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
PROBABILITY_ATOL = 1e-5
OUTPUT_RTOL = 1e-5
OUTPUT_ATOL = 1e-6


def assert_probabilities_close(got: Any, want: Any, err_msg: str = "") -> None:
    """Quantities of order 1 (probabilities, entropies, MI) from two code paths or machines."""
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=0, atol=PROBABILITY_ATOL, err_msg=err_msg)


def assert_outputs_close(got: Any, want: Any, err_msg: str = "") -> None:
    """Raw outputs ``(..., K)`` or ``(...)``: within ``OUTPUT_RTOL`` of the largest magnitude in their row."""
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = np.abs(w).max(axis=-1, keepdims=True) if w.ndim > 1 else np.abs(w)
    bound = np.maximum(OUTPUT_RTOL * scale, OUTPUT_ATOL)
    excess = np.abs(g - w) - bound
    assert g.shape == w.shape, f"{err_msg}: shapes {g.shape} and {w.shape}"
    assert (excess <= 0).all(), f"{err_msg}: largest excess over the tolerance {excess.max():.3g}"


def classification_metric_bounds(probs: Any, labels: Any, logit_scale: Any, n_bins: int = 15) -> dict[str, float]:
    """How far accuracy, ECE, NLL and Brier of ``probs`` may move when the logits behind them move by
    ``OUTPUT_RTOL`` of ``logit_scale`` (the row's largest |logit|, over samples in MC mode).

    A logit error ``dz`` moves every log-probability by at most ``t = 2 dz`` (softmax subtracts a weighted
    mean of the logits), so: a prediction whose top two log-probabilities lie within ``2 t`` may change
    class (accuracy moves by 1/N each); one whose confidence lies within ``conf * t`` of an inner bin edge may
    change bin (ECE moves by at most 2/N each); ECE also moves by the mean ``conf * t``, NLL by the mean
    ``t`` and Brier by twice that.  Shapes: probs ``(N, C)``, labels ``(N,)``, logit_scale ``(N,)``.
    """
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n = len(y)
    t = 2 * OUTPUT_RTOL * np.maximum(np.asarray(logit_scale, dtype=np.float64), 1.0)
    top2 = np.sort(p, axis=1)[:, -2:]
    gap = np.log(np.maximum(top2[:, 1], 1e-300)) - np.log(np.maximum(top2[:, 0], 1e-300))
    near_tie = int((gap <= 2 * t).sum())
    edge = np.round(top2[:, 1] * n_bins)
    inner = (edge >= 1) & (edge <= n_bins - 1)
    near_edge = int((inner & (np.abs(top2[:, 1] * n_bins - edge) <= top2[:, 1] * t * n_bins)).sum())
    return {
        "accuracy": near_tie / n + 1e-12,
        "ece": float(np.mean(top2[:, 1] * t)) + 2 * (near_tie + near_edge) / n + 1e-12,
        "nll": float(np.mean(t)) + 1e-12,
        "brier": 2 * float(np.mean(t)) + 1e-12,
    }


def regression_metric_bounds(samples: Any, target: Any, tau: float, low: Any, high: Any) -> dict[str, float]:
    """How far the regression metrics may move when every sampled prediction moves by
    ``d = OUTPUT_RTOL * max |prediction|``: RMSE by ``d``; the interval bounds, the stds and the mean width by
    ``2 d`` at most; the protocol log-likelihood by ``tau * max |y - yhat| * d``; coverage by the share of
    targets within ``2 d`` of an interval bound.  Shapes: samples ``(S, N)``, the rest ``(N,)``.
    """
    s, y = np.asarray(samples, dtype=np.float64), np.asarray(target, dtype=np.float64)
    d = OUTPUT_RTOL * max(float(np.abs(s).max()), 1.0)
    edge = np.minimum(np.abs(np.asarray(low) - y), np.abs(np.asarray(high) - y))
    coverage = float((edge <= 2 * d).mean()) + 1e-12
    bounds = {"rmse": d, "ll": tau * float(np.abs(y - s).max()) * d, "mean_interval_width": 2 * d, "mean_std": 2 * d,
              "mean_epistemic_std": 2 * d}
    return {**{k: v + 1e-12 for k, v in bounds.items()}, "coverage_95": coverage}


def assert_metrics_within(got: dict[str, float], want: dict[str, float], bounds: dict[str, float], where: str) -> None:
    for key, bound in bounds.items():
        assert abs(got[key] - want[key]) <= bound, f"{where} {key}: {got[key]} vs {want[key]}, allowed {bound:.3g}"
