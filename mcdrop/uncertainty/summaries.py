"""Uncertainty from Monte Carlo samples: pure functions of ``(S, B, ...)`` tensors returning ``(B, ...)``.

Classification, from sampled log-probabilities ``log p_s`` of shape ``(S, B, C)``:

* mean probabilities ``p = (1/S) sum_s p_s``, computed as ``log p = logsumexp_s log p_s - log S``;
* predictive entropy ``H[p] = -sum_c p_c log p_c`` (total uncertainty);
* expected entropy ``E_s H[p_s]`` (aleatoric part);
* mutual information ``I = H[p] - E_s H[p_s] >= 0`` (epistemic part; BALD);
* variation ratio ``1 - f_mode / S``, ``f_mode`` the count of the most voted class;
* per-class standard deviation of ``p_s`` (``S - 1`` denominator) and the Monte Carlo standard error
  of the mean probabilities, ``std / sqrt(S)``.

Regression, from sampled means ``mu_s`` ``(S, B)`` and noise variances ``sigma^2_s`` (``(S, B)``, or one
number ``1 / tau`` for a homoscedastic model), by the law of total variance:

* epistemic ``Var_s mu_s`` (``S`` denominator: the variance of the equally weighted sample mixture);
* aleatoric ``E_s sigma^2_s``; predictive variance = epistemic + aleatoric, clamped at 0;
* the central interval at level ``a`` holds the ``(1-a)/2`` and ``(1+a)/2`` quantiles of the predictive
  mixture ``(1/S) sum_s N(mu_s, sigma^2_s)``;
* Monte Carlo standard error of the mean ``std_s(mu_s) / sqrt(S)`` (``S - 1`` denominator).

Entropies use ``entr(p) = -p log p`` (0 at p = 0): no ``log 0``, no NaN when probabilities underflow.
Everything works in float32 and float64; quantiles are solved in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from mcdrop.errors import ParameterError
from mcdrop.request import Task

__all__ = [
    "ClassificationSummary",
    "RegressionSummary",
    "classification",
    "classification_stderr",
    "entropy",
    "expected_entropy",
    "main_stderr",
    "mean_log_probs",
    "mixture_interval",
    "mutual_information",
    "predictive_entropy",
    "probability_std",
    "regression",
    "regression_stderr",
    "summarize",
    "summarize_classification",
    "summarize_regression",
    "variation_ratio",
]


def entropy(log_p: Tensor) -> Tensor:
    """``H = -sum_c p_c log p_c`` over the last dim. Shape: ``(*, C)`` -> ``(*)``."""
    return torch.special.entr(log_p.exp()).sum(-1)


def mean_log_probs(log_probs: Tensor) -> Tensor:
    """``log p = logsumexp_s log p_s - log S``. Shape: ``(S, B, C)`` -> ``(B, C)``."""
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])


def predictive_entropy(log_probs: Tensor) -> Tensor:
    """``H[mean_s p_s]``. Shape: ``(S, B, C)`` -> ``(B,)``."""
    return entropy(mean_log_probs(log_probs))


def expected_entropy(log_probs: Tensor) -> Tensor:
    """``mean_s H[p_s]``. Shape: ``(S, B, C)`` -> ``(B,)``."""
    return entropy(log_probs).mean(0)


def mutual_information(log_probs: Tensor) -> Tensor:
    """``I = H[mean_s p_s] - mean_s H[p_s]``, clamped at 0. Shape: ``(S, B, C)`` -> ``(B,)``."""
    return (predictive_entropy(log_probs) - expected_entropy(log_probs)).clamp_min(0.0)


def variation_ratio(log_probs: Tensor) -> Tensor:
    """``1 - f_mode / S`` over the per-sample argmax votes. Shape: ``(S, B, C)`` -> ``(B,)``."""
    s, b, c = log_probs.shape
    votes = torch.zeros(b, c, dtype=log_probs.dtype, device=log_probs.device)
    votes.scatter_add_(1, log_probs.argmax(-1).T, torch.ones(b, s, dtype=log_probs.dtype, device=log_probs.device))
    return 1.0 - votes.amax(-1) / s


def probability_std(log_probs: Tensor) -> Tensor:
    """Per-class sample standard deviation of ``p_s`` (``S - 1`` denominator; 0 when ``S = 1``).

    Shape: ``(S, B, C)`` -> ``(B, C)``.
    """
    if log_probs.shape[0] < 2:
        return torch.zeros_like(log_probs[0])
    return log_probs.exp().std(0, correction=1)


def classification_stderr(log_probs: Tensor) -> Tensor:
    """Largest Monte Carlo standard error of the mean probabilities, ``max_c std_c / sqrt(S)``.

    Shape: ``(S, B, C)`` -> ``(B,)``.
    """
    return probability_std(log_probs).amax(-1) / math.sqrt(log_probs.shape[0])


def regression_stderr(means: Tensor) -> Tensor:
    """Monte Carlo standard error of the predictive mean, ``std_s(mu_s) / sqrt(S)``. Shape: ``(S, B)`` -> ``(B,)``."""
    if means.shape[0] < 2:
        return torch.zeros_like(means[0])
    return means.std(0, correction=1) / math.sqrt(means.shape[0])


def mixture_interval(means: Tensor, variances: Tensor | float, level: float, iterations: int = 64) -> tuple[Tensor, Tensor]:
    """Central interval of ``(1/S) sum_s N(mu_s, sigma^2_s)`` at ``level``, by bisection on its CDF.

    Shape: means ``(S, B)``, variances ``(S, B)`` or a number -> two ``(B,)`` tensors.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level has to be in (0, 1), but got {level}")
    mu = means.double()
    var = torch.as_tensor(variances, dtype=torch.float64, device=mu.device).expand_as(mu)
    sd = var.clamp_min(0.0).sqrt().clamp_min(1e-12 * (1.0 + mu.abs().amax().item()))
    span = mu.amax(0) - mu.amin(0) + 10.0 * sd.amax(0)
    bounds = []
    for q in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        lo, hi = mu.amin(0) - span, mu.amax(0) + span
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = torch.special.ndtr((mid - mu) / sd).mean(0) < q
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        bounds.append((0.5 * (lo + hi)).to(means.dtype))
    return bounds[0], bounds[1]


@dataclass(frozen=True)
class ClassificationSummary:
    """Per-input classification uncertainty; fields that need samples are None in deterministic mode.

    Shapes: ``probabilities``, ``probability_std``, ``probability_stderr`` ``(B, C)``; the rest ``(B,)``.
    """

    probabilities: Tensor
    predicted_class: Tensor
    confidence: Tensor
    predictive_entropy: Tensor
    expected_entropy: Tensor | None
    mutual_information: Tensor | None
    variation_ratio: Tensor | None
    probability_std: Tensor | None
    probability_stderr: Tensor | None
    n_samples: Tensor

    def select(self, index: Tensor) -> ClassificationSummary:
        """The rows ``index`` of every field."""
        rows: dict[str, Any] = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                                for f in fields(self)}
        return type(self)(**rows)


@dataclass(frozen=True)
class RegressionSummary:
    """Per-input regression uncertainty, shapes ``(B,)``; sampling-only fields are None in deterministic mode."""

    mean: Tensor
    variance: Tensor
    std: Tensor
    epistemic_variance: Tensor | None
    aleatoric_variance: Tensor
    interval_low: Tensor
    interval_high: Tensor
    level: float
    mean_stderr: Tensor | None
    n_samples: Tensor

    def select(self, index: Tensor) -> RegressionSummary:
        """The rows ``index`` of every tensor field."""
        return type(self)(
            **{
                f.name: getattr(self, f.name) if not isinstance(getattr(self, f.name), Tensor) else getattr(self, f.name)[index]
                for f in fields(self)
            }
        )


def summarize_classification(logits: Tensor, *, sampled: bool = True) -> ClassificationSummary:
    """Every classification quantity from logit samples.

    Args:
        logits: Shape ``(S, B, C)``; for deterministic outputs pass ``(1, B, C)`` with ``sampled=False``.
        sampled: False leaves the quantities that need samples as None.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    s, b, _ = log_probs.shape
    log_mean = mean_log_probs(log_probs)
    probs = log_mean.exp()
    confidence, predicted = probs.max(-1)
    total = entropy(log_mean)
    n = torch.full((b,), s, dtype=torch.int64)
    if not sampled:
        return ClassificationSummary(probs, predicted, confidence, total, None, None, None, None, None, n)
    aleatoric = expected_entropy(log_probs)
    std = probability_std(log_probs)
    return ClassificationSummary(
        probabilities=probs,
        predicted_class=predicted,
        confidence=confidence,
        predictive_entropy=total,
        expected_entropy=aleatoric,
        mutual_information=(total - aleatoric).clamp_min(0.0),
        variation_ratio=variation_ratio(log_probs),
        probability_std=std,
        probability_stderr=std / math.sqrt(s),
        n_samples=n,
    )


def summarize_regression(
    means: Tensor, variances: Tensor | float, *, level: float = 0.95, sampled: bool = True
) -> RegressionSummary:
    """Every regression quantity from sampled means and noise variances.

    Args:
        means: Shape ``(S, B)`` (``(1, B)`` with ``sampled=False`` for a deterministic output).
        variances: noise variances ``(S, B)``, or one number ``1 / tau``.
        level: central interval level in (0, 1).
        sampled: False leaves the quantities that need samples as None.
    """
    s, b = means.shape
    mean = means.mean(0)
    var_t = torch.as_tensor(variances, dtype=means.dtype, device=means.device)
    aleatoric = var_t.expand_as(means).mean(0) if var_t.dim() else var_t.expand(b).clone()
    epistemic = means.var(0, correction=0) if sampled else None
    total = (aleatoric + (epistemic if epistemic is not None else 0.0)).clamp_min(0.0)
    low, high = mixture_interval(means, var_t, level)
    return RegressionSummary(
        mean=mean,
        variance=total,
        std=total.sqrt(),
        epistemic_variance=epistemic,
        aleatoric_variance=aleatoric,
        interval_low=low,
        interval_high=high,
        level=level,
        mean_stderr=regression_stderr(means) if sampled else None,
        n_samples=torch.full((b,), s, dtype=torch.int64),
    )


def summarize(outputs: Tensor, task: Task | str, *, tau: float | None = None, level: float = 0.95,
              sampled: bool = True) -> ClassificationSummary | RegressionSummary:
    """Every quantity of ``task`` from a model's outputs.

    Args:
        outputs: Shape ``(S, B, C)`` logits (classification), ``(S, B)`` means (homoscedastic) or ``(S, B, 2)``
            means and log-variances (heteroscedastic); ``S = 1`` with ``sampled=False`` for a deterministic output.
        task: the model's :class:`~mcdrop.request.Task`.
        tau: noise precision of a homoscedastic model (aleatoric variance ``1 / tau``).
        level: central interval level (regression).
        sampled: False leaves the quantities that need samples as None.
    """
    task = Task(task)
    if task is Task.CLASSIFICATION:
        return summarize_classification(outputs, sampled=sampled)
    outputs = _regression_outputs(outputs, task)
    if task is Task.HOMOSCEDASTIC:
        if tau is None or not tau > 0:
            raise ValueError(f"a homoscedastic model needs its noise precision tau > 0, but got {tau}")
        return summarize_regression(outputs, 1.0 / tau, level=level, sampled=sampled)
    return summarize_regression(outputs[..., 0], outputs[..., 1].exp(), level=level, sampled=sampled)


def _regression_outputs(outputs: Tensor, task: Task) -> Tensor:
    """A regressor's ``(S, B, 1)`` outputs as ``(S, B)`` (homoscedastic); other shapes must be the task's."""
    if task is Task.HOMOSCEDASTIC and outputs.dim() == 3 and outputs.shape[-1] == 1:
        return outputs.squeeze(-1)
    expected = 2 if task is Task.HOMOSCEDASTIC else 3
    if outputs.dim() != expected or (task is Task.HETEROSCEDASTIC and outputs.shape[-1] != 2):
        want = "(S, B) or (S, B, 1) means" if task is Task.HOMOSCEDASTIC else "(S, B, 2) means and log-variances"
        raise ValueError(f"a {task.value} model's outputs must be {want}, but got shape {tuple(outputs.shape)}; for a "
                         "model with several outputs, export it with mcdrop.export_model(..., target=<column>)")
    return outputs


def main_stderr(outputs: Tensor, task: Task | str) -> Tensor:
    """The Monte Carlo standard error of the main estimate: the largest over classes of the mean probability's
    (classification) or the mean's (regression). Shape: outputs as in :func:`summarize` -> ``(B,)``."""
    task = Task(task)
    if task is Task.CLASSIFICATION:
        return classification_stderr(torch.log_softmax(outputs, -1))
    outputs = _regression_outputs(outputs, task)
    return regression_stderr(outputs if task is Task.HOMOSCEDASTIC else outputs[..., 0])


def classification(summary: ClassificationSummary | RegressionSummary) -> ClassificationSummary:
    """``summary``, which has to be a classifier's (a :class:`~mcdrop.errors.ParameterError` otherwise)."""
    if not isinstance(summary, ClassificationSummary):
        raise ParameterError("expected a classifier's summary, but the model is a regressor", "summary")
    return summary


def regression(summary: ClassificationSummary | RegressionSummary) -> RegressionSummary:
    """``summary``, which has to be a regressor's (a :class:`~mcdrop.errors.ParameterError` otherwise)."""
    if not isinstance(summary, RegressionSummary):
        raise ParameterError("expected a regressor's summary, but the model is a classifier", "summary")
    return summary
