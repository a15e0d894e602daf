"""Model evaluation: deterministic and MC metrics, OOD separation and selective prediction (classifiers);
RMSE, the UCI log-likelihood, interval coverage and mean uncertainties (regressors)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mcdrop.sampling.engine import MCEngine
from mcdrop.uncertainty import metrics as M
from mcdrop.uncertainty.prediction import predict
from mcdrop.uncertainty.summaries import regression

__all__ = ["classifier_summaries", "evaluate_classifier", "evaluate_regressor"]

SCORES = ("predictive_entropy", "mutual_information", "max_probability")


def _scores(summary: Any) -> dict[str, Tensor]:
    out = {"predictive_entropy": summary.predictive_entropy, "max_probability": -summary.confidence}
    if summary.mutual_information is not None:
        out["mutual_information"] = summary.mutual_information
    return out


def classifier_summaries(engine: MCEngine, x: Tensor, *, mode: str, n_samples: int = 50, seed: int = 0,
                         batch_size: int = 1000) -> list[Any]:
    """Summaries of ``x`` in batches; row ``i`` keeps its position ``i`` (so masks match one big call)."""
    return [predict(engine, x[i:i + batch_size], mode=mode, n_samples=n_samples, seed=seed,
                    rows=torch.arange(i, min(i + batch_size, len(x)))).summary
            for i in range(0, len(x), batch_size)]


def evaluate_classifier(engine: MCEngine, x: Tensor, y: Tensor, *, n_samples: int = 50, seed: int = 0,
                        batch_size: int = 1000) -> dict[str, dict[str, float]]:
    """Per mode (``deterministic``, ``mc``): accuracy, NLL, Brier, ECE (15 bins), mean uncertainties, AURC and
    accuracy at 80% coverage (out-of-distribution scores: :func:`mcdrop.training.calibrate.ood_report`)."""
    results: dict[str, dict[str, float]] = {}
    for mode in ("deterministic", "mc"):
        summaries = classifier_summaries(engine, x, mode=mode, n_samples=n_samples, seed=seed, batch_size=batch_size)
        probs = torch.cat([s.probabilities for s in summaries])
        conf = torch.cat([s.confidence for s in summaries])
        correct = probs.argmax(1) == y
        row: dict[str, float] = {
            "accuracy": float(correct.float().mean()), "nll": M.nll(probs, y), "brier": M.brier(probs, y),
            "ece": M.ece(probs, y, 15), "aurc": M.aurc(conf, correct), "accuracy_at_80_coverage":
            M.accuracy_at_coverage(conf, correct, 0.8),
        }
        scores_in = {k: torch.cat([_scores(s)[k] for s in summaries]) for k in _scores(summaries[0])}
        for name, values in scores_in.items():
            if name != "max_probability":
                row[f"mean_{name}"] = float(values.mean())
        if summaries[0].variation_ratio is not None:
            row["mean_variation_ratio"] = float(torch.cat([s.variation_ratio for s in summaries]).mean())
        results[mode] = row
    return results


def evaluate_regressor(engine: MCEngine, x: Tensor, y: Tensor, *, n_samples: int = 10_000, seed: int = 0,
                       level: float = 0.95) -> dict[str, dict[str, float]]:
    """Per mode: RMSE of the predictive mean, the Gaussian(-mixture) log-likelihood (MC: the UCI
    protocol's ``logsumexp_t`` form; deterministic: one Gaussian of variance ``1/tau``), the coverage and
    mean width of the central ``level`` interval, and the mean epistemic / total std."""
    results: dict[str, dict[str, float]] = {}
    for mode in ("deterministic", "mc"):
        result = predict(engine, x, mode=mode, n_samples=n_samples, seed=seed, level=level, return_samples=True)
        s = regression(result.summary)
        samples = result.samples
        tau = float(engine.model.get_buffer("tau"))
        assert samples is not None
        inside = (y >= s.interval_low) & (y <= s.interval_high)
        row = {
            "rmse": M.rmse(s.mean.double(), y.double()),
            "ll": M.gaussian_mixture_ll(samples, y, tau),
            f"coverage_{round(level * 100)}": float(inside.double().mean()),
            "mean_interval_width": float((s.interval_high - s.interval_low).double().mean()),
            "mean_std": float(s.std.double().mean()),
        }
        if s.epistemic_variance is not None:
            row["mean_epistemic_std"] = float(s.epistemic_variance.double().sqrt().mean())
        results[mode] = row
    return results
