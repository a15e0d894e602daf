"""Model evaluation: deterministic and MC metrics, OOD separation and selective prediction."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mcdrop import metrics as M
from mcdrop.engine import MCEngine

__all__ = ["evaluate_classifier"]

SCORES = ("predictive_entropy", "mutual_information", "max_probability")


def _scores(summary: Any) -> dict[str, Tensor]:
    out = {"predictive_entropy": summary.predictive_entropy, "max_probability": -summary.confidence}
    if summary.mutual_information is not None:
        out["mutual_information"] = summary.mutual_information
    return out


def evaluate_classifier(engine: MCEngine, x: Tensor, y: Tensor, *, n_samples: int = 50, seed: int = 0,
                        ood: Tensor | None = None, batch_size: int = 1000) -> dict[str, dict[str, float]]:
    """Per mode (``deterministic``, ``mc``): accuracy, NLL, Brier, ECE (15 bins), mean uncertainties, AURC,
    accuracy at 80% coverage, and with ``ood`` inputs AUROC/AUPR/FPR95 of each uncertainty score
    (max probability enters as ``-max p``: higher means more uncertain)."""
    results: dict[str, dict[str, float]] = {}
    for mode in ("deterministic", "mc"):
        summaries = [engine.run(x[i:i + batch_size], mode=mode, n_samples=n_samples, seed=seed,
                                rows=torch.arange(i, min(i + batch_size, len(x)))).summary
                     for i in range(0, len(x), batch_size)]
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
        if ood is not None:
            out_summary = engine.run(ood, mode=mode, n_samples=n_samples, seed=seed + 1).summary
            for name, values in _scores(out_summary).items():
                row[f"auroc_{name}"] = M.auroc(scores_in[name], values)
                row[f"aupr_{name}"] = M.aupr(scores_in[name], values)
                row[f"fpr95_{name}"] = M.fpr_at_95_tpr(scores_in[name], values)
        results[mode] = row
    return results
