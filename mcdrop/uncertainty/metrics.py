"""Evaluation metrics: calibration, proper scores, out-of-distribution detection, selective prediction.

All take NumPy arrays or tensors and return Python floats.

* ``ece``: expected calibration error with ``M`` equal-width confidence bins,
  ``sum_m |B_m|/n * |acc(B_m) - conf(B_m)|``.
* ``nll``: ``-mean_i log p_i[y_i]`` (probabilities clipped at ``1e-12``); ``brier``: ``mean_i sum_c (p_ic - 1[c = y_i])^2``.
* ``auroc``: P(score_out > score_in) + P(tie)/2 (Mann-Whitney U / (n_in n_out)), OOD as the positive class;
  ``aupr``: average precision for OOD positives; ``fpr_at_95_tpr``: fraction of in-distribution inputs
  scored at or above the highest threshold that flags at least 95% of OOD inputs.
* ``aurc``: area under the risk-coverage curve when rejecting the least confident first;
  ``accuracy_at_coverage``: accuracy on the most confident fraction of inputs.
* ``gaussian_mixture_ll``: the UCI benchmark's test log-likelihood,
  ``mean_i [logsumexp_t(-tau/2 (y_i - yhat_ti)^2) - log T - log(2 pi)/2 + log(tau)/2]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special, stats

__all__ = [
    "accuracy_at_coverage",
    "aupr",
    "aurc",
    "auroc",
    "brier",
    "ece",
    "fpr_at_95_tpr",
    "gaussian_mixture_ll",
    "nll",
    "rmse",
]


def _np(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence. Shape: ``(N, C)``, ``(N,)``."""
    p, y = _np(probs), _np(labels)
    conf, pred = p.max(1), p.argmax(1)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # bin m holds (m/M, (m+1)/M]
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return float(total)


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the true labels."""
    p, y = _np(probs), _np(labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def brier(probs: Any, labels: Any) -> float:
    """Mean multi-class Brier score."""
    p, y = _np(probs), _np(labels)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(1).mean())


def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve separating OOD (higher score) from in-distribution inputs."""
    a, b = _np(scores_in).astype(float), _np(scores_out).astype(float)
    u = stats.mannwhitneyu(b, a, alternative="two-sided").statistic
    return float(u / (len(a) * len(b)))


def aupr(scores_in: Any, scores_out: Any) -> float:
    """Average precision with OOD inputs as positives."""
    scores = np.concatenate([_np(scores_in), _np(scores_out)]).astype(float)
    positive = np.concatenate([np.zeros(len(_np(scores_in))), np.ones(len(_np(scores_out)))])
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    tp, fp = np.cumsum(pos), np.cumsum(1 - pos)
    last = np.r_[np.diff(s) != 0, True]  # evaluate at the end of each block of tied scores
    precision, recall = tp[last] / (tp[last] + fp[last]), tp[last] / pos.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_95_tpr(scores_in: Any, scores_out: Any) -> float:
    """False-positive rate on in-distribution inputs at the threshold flagging 95% of OOD inputs."""
    a, b = _np(scores_in).astype(float), _np(scores_out).astype(float)
    k = math.ceil(round(0.95 * len(b), 9))  # the highest threshold that flags at least 95% of OOD inputs
    threshold = np.sort(b)[len(b) - k]
    return float((a >= threshold).mean())


def aurc(confidence: Any, correct: Any) -> float:
    """Area under the risk-coverage curve (risk = error rate among the accepted inputs)."""
    c, ok = _np(confidence).astype(float), _np(correct).astype(float)
    order = np.argsort(-c, kind="stable")
    errors = np.cumsum(1.0 - ok[order])
    return float((errors / np.arange(1, len(c) + 1)).mean())


def accuracy_at_coverage(confidence: Any, correct: Any, coverage: float = 0.8) -> float:
    """Accuracy on the ``coverage`` fraction of inputs with the highest confidence."""
    c, ok = _np(confidence).astype(float), _np(correct).astype(float)
    keep = max(1, round(coverage * len(c)))
    return float(ok[np.argsort(-c, kind="stable")[:keep]].mean())


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error."""
    return float(np.sqrt(((_np(pred) - _np(target)) ** 2).mean()))


def gaussian_mixture_ll(samples: Any, target: Any, tau: float) -> float:
    """UCI test log-likelihood of ``T`` sampled predictions. Shape: samples ``(T, N)``, target ``(N,)``."""
    s, y = _np(samples).astype(np.float64), _np(target).astype(np.float64)
    t = s.shape[0]
    ll = special.logsumexp(-0.5 * tau * (y[None] - s) ** 2, axis=0) - np.log(t) - 0.5 * np.log(2 * np.pi) + 0.5 * np.log(tau)
    return float(ll.mean())
