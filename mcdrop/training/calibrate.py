"""Fitting a model's calibration (:class:`~mcdrop.uncertainty.calibration.Calibration`) and measuring it.

Three disjoint parts of the data, none of them the test set:

* the **training** rows: the feature density is fitted on their hidden features;
* the **temperature** rows (held out of training; the temperature was fitted on them): each layer's density, and
  the logits' energy, is standardised on them;
* the **calibration** rows (held out of training and of the temperature): the OOD threshold (the
  ``ood_tpr`` quantile of their OOD scores, which are stored too, for drift monitoring), the conformal scores of
  every method in both modes, and the (uncertainty, error) pairs abstention thresholds are chosen from.

MC mode's scores use ``n_samples`` passes with the calibration seed; the conformal uniforms are keyed by
(that seed, the row's position in the calibration split), as a request's are by its own seed and rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mcdrop.nets.models import feature_layers, logit_layer
from mcdrop.request import Mode, Task
from mcdrop.sampling.engine import MCEngine
from mcdrop.uncertainty import conformal, selective
from mcdrop.uncertainty.calibration import Calibration
from mcdrop.uncertainty.metrics import aupr, auroc, fpr_at_95_tpr
from mcdrop.uncertainty.ood import Combine, fit_feature_density
from mcdrop.uncertainty.prediction import predict
from mcdrop.uncertainty.summaries import classification, regression

__all__ = ["LEVELS", "calibrate_classifier", "calibrate_regressor", "conformal_tensors", "coverage_report", "features",
           "ood_metrics", "ood_report", "ood_scores", "ood_threshold", "regression_conformal_tensors"]

LEVELS = (0.8, 0.9, 0.95)


def features(engine: MCEngine, x: Tensor, layers: Sequence[str], batch: int = 5000) -> dict[str, Tensor]:
    """The deterministic outputs of ``layers`` for every row of ``x`` (in batches)."""
    parts: dict[str, list[Tensor]] = {name: [] for name in layers}
    for i in range(0, len(x), batch):
        _, captured = engine.deterministic_features(x[i:i + batch], layers)
        for name in layers:
            parts[name].append(captured[name])
    return {name: torch.cat(v) for name, v in parts.items()}


def _probabilities(engine: MCEngine, x: Tensor, mode: Mode, n_samples: int, seed: int) -> Tensor:
    return classification(predict(engine, x, mode=mode, n_samples=n_samples, seed=seed).summary).probabilities.double()


def conformal_tensors(probs: Tensor, labels: Tensor, mode: Mode, seed: int) -> dict[str, Tensor]:
    """The sorted calibration scores of every set method, ``{"conformal.<mode>.<method>": (n,)}``; the randomised
    methods' uniforms are keyed by (``seed``, row position). Shapes: probs ``(n, C)``, labels ``(n,)``."""
    u = conformal.keyed_uniforms(seed, torch.arange(len(labels), dtype=torch.int64))
    return {f"conformal.{Mode(mode).value}.{method}": torch.from_numpy(np.sort(conformal.label_scores(
        probs, labels, method, u).numpy())) for method in conformal.METHODS}


def calibrate_classifier(model: nn.Module, *, train: tuple[Tensor, Tensor], temperature: tuple[Tensor, Tensor],
                         calibration: tuple[Tensor, Tensor], n_classes: int, class_names: Sequence[str] | None = None,
                         n_samples: int = 50, seed: int = 0, dim: int = 128, combine: Combine = "mean",
                         energy: bool = True, ood_tpr: float = 0.95, default_risk: float = 0.02,
                         delta: float = 0.05) -> Calibration:
    """Fit everything :class:`Calibration` needs (see the module docs); the rows are ``(inputs, labels)``.
    ``energy``: the OOD score also standardises the logits' energy, where the model names its logits' module
    (``logit_layer()``)."""
    engine = MCEngine(model)
    layers = feature_layers(model)
    x_cal, y_cal = calibration
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    if layers:  # a model that names no feature layer (a graph without a last Linear) gets no OOD score
        energy_layer = logit_layer(model) if energy else None
        captured = [*layers, *([energy_layer] if energy_layer is not None else [])]
        density = fit_feature_density(features(engine, train[0], layers), train[1],
                                      features(engine, temperature[0], captured), n_classes, dim, combine, energy_layer)
        ood = density.score(features(engine, x_cal, captured)).double().numpy()
        tensors.update(density.tensors())
        tensors["ood.calibration_scores"] = torch.from_numpy(np.sort(ood))
        meta.update({"feature_layers": list(density.layers), "density_dim": dim, "density_combine": combine,
                     **({"density_energy_layer": energy_layer} if energy_layer is not None else {}),
                     "ood_threshold": ood_threshold(ood, ood_tpr), "ood_tpr": ood_tpr})
    for mode in Mode:
        probs = _probabilities(engine, x_cal, mode, n_samples, seed)
        tensors.update(conformal_tensors(probs, y_cal, mode, seed))
        confidence, predicted = probs.max(1)
        tensors[f"selective.{mode.value}.uncertainty"] = (1.0 - confidence).contiguous()
        tensors[f"selective.{mode.value}.errors"] = (predicted != y_cal).double()
    meta.update({
        "default_risk": default_risk, "delta": delta, "raps_lambda": conformal.RAPS_LAMBDA,
        "raps_k_reg": conformal.RAPS_K_REG, "mc_samples": n_samples, "seed": seed,
        "rows": {"density": len(train[1]), "standardisation": len(temperature[1]), "calibration": len(y_cal)},
    })
    calibrated = Calibration(Task.CLASSIFICATION, meta, tensors, class_names)
    for mode in Mode:
        t = calibrated.uncertainty_threshold(mode)
        meta[f"default_threshold_{mode.value}"] = t
    return calibrated


def calibrate_regressor(model: nn.Module, *, calibration: tuple[Tensor, Tensor], n_samples: int = 1000,
                        seed: int = 0) -> Calibration:
    """Normalised conformal scores ``|y - mu| / sigma`` of held-out rows, in both modes (no density)."""
    x_cal, y_cal = calibration
    tensors = regression_conformal_tensors(MCEngine(model), x_cal, y_cal, n_samples, seed)
    meta = {"mc_samples": n_samples, "seed": seed, "rows": {"calibration": len(y_cal)}}
    return Calibration(Task.HOMOSCEDASTIC, meta, tensors)


def regression_conformal_tensors(engine: MCEngine, x: Tensor, y: Tensor, n_samples: int, seed: int, *,
                                 task: Task | None = None, tau: float | None = None) -> dict[str, Tensor]:
    """Sorted normalised conformal scores ``|y - mu| / sigma`` of held-out rows, in both modes."""
    tensors: dict[str, Tensor] = {}
    for mode in Mode:
        s = regression(predict(engine, x, task=task, tau=tau, mode=mode, n_samples=n_samples, seed=seed).summary)
        scores = ((y.double() - s.mean.double()).abs() / s.std.double().clamp_min(1e-12)).numpy()
        tensors[f"conformal.{mode.value}.regression"] = torch.from_numpy(np.sort(scores))
    return tensors


def ood_threshold(scores: np.ndarray, tpr: float) -> float:
    """The OOD threshold that keeps a share ``tpr`` of in-distribution rows: the ``ceil(tpr (n + 1))``-th smallest
    of the ``n`` held-out scores (the conformal quantile; the largest when that rank exceeds ``n``)."""
    k = math.ceil(tpr * (len(scores) + 1))
    return float(np.sort(scores)[min(k, len(scores)) - 1])


def coverage_report(calibrated: Calibration, model: nn.Module, test: tuple[Tensor, Tensor], *,
                    n_samples: int = 50, seed: int = 0, levels: Sequence[float] = LEVELS,
                    summaries: dict[Mode, Any] | None = None) -> dict[str, Any]:
    """Empirical coverage, mean set size, share of empty sets (or interval width) and coverage per class on
    ``test``, per mode, method and level; and the selective risk and coverage at the default abstention threshold
    (``abstention``), alone and, under ``with_ood_flag``, together with the OOD flag as the service's default
    decision applies them (abstain when ``1 - confidence`` or ``ood_score`` is above its threshold).

    The card, ``mcdrop evaluate`` and ``mcdrop report`` all take their figures from here: MC mode with
    ``n_samples`` passes and ``seed`` (also the key of the randomised sets' uniforms), unless ``summaries``
    (``{mode: predict(...).summary}`` on ``test``'s inputs) are given.
    """
    engine = MCEngine(model)
    x, y = test
    report: dict[str, Any] = {}
    rows = torch.arange(len(y), dtype=torch.int64)
    u = conformal.keyed_uniforms(seed, rows)
    typical = None
    if calibrated.task is Task.CLASSIFICATION and calibrated.density is not None and calibrated.ood_threshold is not None:
        ood = calibrated.density.score(features(engine, x, calibrated.feature_layers)).double()
        typical = ood <= calibrated.ood_threshold
    for mode in Mode:
        s = summaries[mode] if summaries is not None else predict(engine, x, mode=mode, n_samples=n_samples,
                                                                   seed=seed).summary
        entry: dict[str, Any] = {}
        if calibrated.task is Task.CLASSIFICATION:
            s = classification(s)
            probs = s.probabilities.double()
            for method in conformal.METHODS:
                if not calibrated.supports("coverage", mode, method):
                    continue
                for level in levels:
                    q = calibrated.conformal_threshold(mode, method, level)
                    sets = conformal.prediction_sets(probs, method, q, u, calibrated.lam, calibrated.k_reg)
                    covered = sets[torch.arange(len(y)), y]
                    per_class = [float(covered[y == c].double().mean()) for c in range(probs.shape[1])]
                    entry[f"{method}@{level:g}"] = {"coverage": float(covered.double().mean()),
                                                    "mean_size": float(sets.sum(1).double().mean()),
                                                    "min_class_coverage": min(per_class),
                                                    "empty": float((sets.sum(1) == 0).double().mean())}
            t = calibrated.uncertainty_threshold(mode)
            answered = (1.0 - s.confidence.double()) <= t
            wrong = s.predicted_class != y
            entry["abstention"] = {"threshold": t, "coverage": float(answered.double().mean()),
                                   "risk": float(wrong[answered].double().mean()) if answered.any() else 0.0,
                                   "target_risk": calibrated.default_risk}
            if typical is not None:
                both = answered & typical
                entry["abstention"]["with_ood_flag"] = {
                    "coverage": float(both.double().mean()),
                    "risk": float(wrong[both].double().mean()) if both.any() else 0.0}
            entry["risk_coverage"] = selective.risk_coverage((1.0 - s.confidence.double()).numpy(),
                                                             wrong.double().numpy())
        else:
            s = regression(s)
            mean, std = s.mean.double(), s.std.double()
            for level in levels:
                q = calibrated.conformal_threshold(mode, "", level)
                inside = (y.double() - mean).abs() <= q * std
                gaussian = (y >= s.interval_low) & (y <= s.interval_high) if math.isclose(level, s.level) else None
                entry[f"normalised@{level:g}"] = {"coverage": float(inside.double().mean()),
                                                  "mean_width": float((2 * q * std).mean())}
                if gaussian is not None:
                    entry[f"gaussian_mixture@{level:g}"] = {"coverage": float(gaussian.double().mean())}
        report[mode.value] = entry
    n_cal = int(calibrated.meta.get("rows", {}).get("calibration", 0))
    if n_cal:
        report["bounds"] = {f"{level:g}": conformal.coverage_interval(len(y), n_cal, level) for level in levels}
    return report


def ood_scores(engine: MCEngine, calibrated: Calibration | None, x: Tensor, *, n_samples: int = 50, seed: int = 0,
               mc: Any = None, deterministic: Any = None) -> dict[str, np.ndarray]:
    """Every score :func:`ood_report` compares (higher = more unusual), ``{name: (B,)}``; ``mc`` and
    ``deterministic`` are the summaries of ``x`` when already computed (MC with ``n_samples`` and ``seed``)."""
    out: dict[str, np.ndarray] = {}
    if calibrated is not None and calibrated.density is not None:
        out["ood_score"] = calibrated.density.score(features(engine, x, calibrated.feature_layers)).numpy()
    mc = mc if mc is not None else predict(engine, x, n_samples=n_samples, seed=seed).summary
    det = deterministic if deterministic is not None else predict(engine, x, mode=Mode.DETERMINISTIC).summary
    mc, det = classification(mc), classification(det)
    assert mc.mutual_information is not None  # an MC summary has it
    out["mc_mutual_information"] = mc.mutual_information.numpy()
    out["mc_predictive_entropy"] = mc.predictive_entropy.numpy()
    out["mc_max_probability"] = -mc.confidence.numpy()
    out["deterministic_entropy"] = det.predictive_entropy.numpy()
    out["deterministic_max_probability"] = -det.confidence.numpy()
    return out


def ood_metrics(inside: dict[str, np.ndarray],
                outside: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, dict[str, float]]]:
    """AUROC, AUPR and FPR at 95% TPR of every score (:func:`ood_scores`) for each set in ``outside``."""
    return {name: {k: {"auroc": auroc(inside[k], out[k]), "aupr": aupr(inside[k], out[k]),
                       "fpr95": fpr_at_95_tpr(inside[k], out[k])} for k in inside}
            for name, out in outside.items()}


def ood_report(engine: MCEngine, calibrated: Calibration | None, x_in: Tensor, proxies: dict[str, Tensor], *,
               n_samples: int = 50, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """AUROC, AUPR and FPR at 95% TPR of every score, for each proxy set against ``x_in`` (in-distribution).

    Scores (higher = more unusual): ``ood_score`` (the density, when calibrated), MC ``mutual_information``,
    MC ``predictive_entropy``, MC ``max_probability`` (as ``-max p``) and deterministic entropy and max probability.
    """
    inside = ood_scores(engine, calibrated, x_in, n_samples=n_samples, seed=seed)
    return ood_metrics(inside, {name: ood_scores(engine, calibrated, x, n_samples=n_samples, seed=seed)
                                for name, x in proxies.items()})
