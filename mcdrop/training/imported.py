"""Calibrate a model folder from the user's held-out data: what the card needs for decisions.

:func:`calibrate_model` shuffles the rows (with ``seed``) and splits them in three disjoint parts, as
:mod:`mcdrop.training.calibrate` expects:

* **density** (40%): the OOD density is fitted on the hidden features of these rows (class-conditional for a
  classifier, one Gaussian for a regressor);
* **fit** (20%): the temperature (classification: the ``T`` minimising the NLL of the MC mean,
  :func:`~mcdrop.training.classifier.fit_temperature`) or the noise precision (homoscedastic:
  ``tau = 1 / (mean (y - mu)^2 - mean Var_s mu_s)``, the residual variance the dropout spread does not explain),
  and the standardisation of each layer's density;
* **calibration** (40%): the OOD threshold, the conformal scores (sets or intervals, both modes) and the
  (uncertainty, error) pairs abstention thresholds are chosen from.

The rows must not have been used to train the model.  A conformal threshold at coverage ``c`` from ``n`` rows is
finite only when ``c <= n / (n + 1)``; the report says the largest coverage supported and how far the coverage
of 1000 future rows may fall from the target.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcdrop.errors import DataError
from mcdrop.nets.artifacts import COMPUTED_CARD_FIELDS, Artifact, load_artifact, save_model
from mcdrop.nets.models import feature_layers
from mcdrop.request import Task
from mcdrop.sampling.engine import MCEngine
from mcdrop.uncertainty import conformal
from mcdrop.uncertainty.calibration import Calibration
from mcdrop.uncertainty.ood import fit_feature_density

__all__ = ["CalibrationDataError", "CalibrationReport", "calibrate_model"]

SPLIT = (0.4, 0.2, 0.4)
"""Shares of the rows for the density, the temperature / tau fit, and the conformal calibration."""
MIN_ROWS = 20


class CalibrationDataError(DataError, ValueError):
    """The calibration data does not fit the model (width, labels, too few rows)."""


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate_model` did: the rows of each part, the fitted numbers and what the split supports."""

    model: str
    directory: Path
    rows: dict[str, int]
    temperature: float | None
    tau: float | None
    max_coverage: float
    coverage_bounds: dict[str, tuple[float, float]]
    ood_threshold: float | None

    def lines(self) -> list[str]:
        """A short human-readable account (the CLI prints it)."""
        used = sum(self.rows.values())
        out = [f"calibrated {self.model} ({self.directory}) on {used} rows: "
               + ", ".join(f"{k} {v}" for k, v in self.rows.items())]
        if self.temperature is not None:
            out.append(f"temperature {self.temperature:.4f}")
        if self.tau is not None:
            out.append(f"noise precision tau {self.tau:.4g} (noise std {1 / math.sqrt(self.tau):.4g})")
        if self.ood_threshold is not None:
            out.append(f"OOD threshold {self.ood_threshold:.3f}")
        n = self.rows["calibration"]
        out.append(f"conformal coverage up to {self.max_coverage:.4f} is supported by the {n} calibration rows "
                   f"(higher coverage gives whole sets / infinite intervals)")
        for level, (lo, hi) in self.coverage_bounds.items():
            out.append(f"  at coverage {level}: the coverage of 1000 future rows lies in [{lo:.3f}, {hi:.3f}] (99.9%)")
        return out


def _labels(y: Any, task: Task, class_names: Sequence[str] | None, n_classes: int) -> Tensor:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise CalibrationDataError(f"labels must be one value per row, but got shape {arr.shape}")
    if task is not Task.CLASSIFICATION:
        try:
            values = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise CalibrationDataError(f"regression targets must be numbers: {err}") from err
        if not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise CalibrationDataError(f"target of row {bad} is {values[bad]}: targets must be finite numbers")
        return torch.from_numpy(values)
    if arr.dtype.kind in "US" or arr.dtype == object:
        names = {n: i for i, n in enumerate(class_names or [])}
        try:
            codes = np.array([names[str(v)] if str(v) in names else int(v) for v in arr])
        except ValueError:
            label = next(str(v) for v in arr if str(v) not in names)
            raise CalibrationDataError(f"label {label!r} is neither a class name ({', '.join(names)}) nor a class "
                                       f"index 0..{n_classes - 1}") from None
    else:
        if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise CalibrationDataError("classification labels must be class indices (whole numbers) or class names")
        codes = arr.astype(np.int64)
    outside = (codes < 0) | (codes >= n_classes)
    if outside.any():
        raise CalibrationDataError(f"{int(outside.sum())} label(s) outside the classes 0..{n_classes - 1} of the model, "
                                   f"e.g. {codes[outside][0]} in row {int(np.flatnonzero(outside)[0])}")
    return torch.from_numpy(codes.astype(np.int64))


def calibrate_model(model: str | os.PathLike[str] | Artifact, x: Any, y: Any, *, output: str | os.PathLike[str] | None = None,
                    n_samples: int = 50, seed: int = 0, ood_tpr: float = 0.95, default_risk: float = 0.02,
                    density_dim: int = 64) -> CalibrationReport:
    """Fit a model folder's calibration on held-out rows ``(x, y)`` and write it into the folder (or ``output``).

    Args:
        model: a model folder or name, or an :class:`~mcdrop.nets.artifacts.Artifact` already loaded (the folder
            is rewritten whole, see :func:`~mcdrop.nets.artifacts.save_model`).
        x: inputs ``(N, D)``, ``D`` the model's input width (an array or tensor).
        y: labels ``(N,)``: class indices or class names (classification), target values (regression).
        output: write the calibrated folder here instead of replacing the model's.
        n_samples: MC passes for the MC-mode scores (requests with another N get a note).
        seed: the split's shuffle, the MC masks' and the conformal uniforms' seed.
        ood_tpr: share of in-distribution rows the OOD threshold passes.
        default_risk: abstention's default target selective risk (classification).
        density_dim: principal directions kept per layer by the OOD density.

    Raises :class:`CalibrationDataError` for data of the wrong width, labels outside the classes or too few rows.
    """
    art = model if isinstance(model, Artifact) else load_artifact(model)
    card, net = art.card, art.model
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if xs.dim() != 2:
        xs = xs.reshape(xs.shape[0], -1) if xs.dim() > 2 else xs
    if xs.dim() != 2 or xs.shape[1] != card.input_size:
        width = xs.shape[1] if xs.dim() == 2 else "?"
        raise CalibrationDataError(f"the data has {width} input columns, but model {card.name!r} expects "
                                   f"{card.input_size} per row")
    if not torch.isfinite(xs).all():
        bad = int(torch.nonzero(~torch.isfinite(xs).all(1))[0])
        raise CalibrationDataError(f"row {bad} of the inputs has a NaN or infinite value")
    n_classes = len(card.class_names or []) if card.task is Task.CLASSIFICATION else 1
    if card.task is Task.CLASSIFICATION and n_classes == 0:
        n_classes = int(getattr(net, "out_features", 0))
    labels = _labels(y, card.task, card.class_names, n_classes)
    if len(labels) != len(xs):
        raise CalibrationDataError(f"{len(xs)} input rows but {len(labels)} labels: give one label per row")
    if len(xs) < MIN_ROWS:
        raise CalibrationDataError(f"{len(xs)} rows are too few to calibrate: give at least {MIN_ROWS} held-out rows "
                                   "(a few hundred for useful conformal coverage)")
    perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))
    n_density, n_fit = int(SPLIT[0] * len(xs)), int(SPLIT[1] * len(xs))
    parts = {"density": perm[:n_density], "fit": perm[n_density:n_density + n_fit], "calibration": perm[n_density + n_fit:]}
    (xa, ya), (xb, yb), (xc, yc) = ((xs[i], labels[i]) for i in parts.values())
    engine = MCEngine(net)
    updates: dict[str, Any] = {}
    temperature = tau = ood_threshold = None
    if card.task is Task.CLASSIFICATION:
        from mcdrop.training.calibrate import calibrate_classifier
        from mcdrop.training.classifier import fit_temperature

        temperature = fit_temperature(net, xb, yb, n_samples, seed=seed)
        net.get_buffer("temperature").fill_(temperature)
        updates["temperature"] = temperature
        counts = torch.bincount(ya, minlength=n_classes)
        if feature_layers(net) and int(counts.min()) < 2:  # the density's class-conditional Gaussians need two each
            missing = [i for i, c in enumerate(counts.tolist()) if c < 2]
            raise CalibrationDataError(f"classes {missing[:8]} have fewer than 2 rows in the density part "
                                       f"({len(ya)} rows): give more rows of every class")
        calibration = calibrate_classifier(net, train=(xa, ya), temperature=(xb, yb), calibration=(xc, yc),
                                           n_classes=n_classes, class_names=card.class_names, n_samples=n_samples,
                                           seed=seed, dim=density_dim, ood_tpr=ood_tpr, default_risk=default_risk)
        ood_threshold = calibration.ood_threshold
    else:
        if card.task is Task.HOMOSCEDASTIC:
            s = engine.sample(xb, n_samples, seed=seed).double()
            resid = float(((yb.double() - s.mean(0)) ** 2).mean() - s.var(0, correction=0).mean())
            noise = max(resid, 1e-6 * float(yb.double().var()) + 1e-12)
            tau = 1.0 / noise
            net.get_buffer("tau").fill_(tau)
            updates["tau"] = tau
        calibration = _calibrate_regression(net, engine, (xa, xb), (xc, yc.float()), card.task, tau, n_samples, seed,
                                            density_dim, ood_tpr)
        ood_threshold = calibration.ood_threshold
    n_cal = len(yc)
    levels = (0.8, 0.9, 0.95)
    bounds = {f"{c:g}": conformal.coverage_interval(1000, n_cal, c) for c in levels}
    meta = {**calibration.meta, "source": "mcdrop calibrate", "rows": {"density": len(ya), "fit": len(yb),
                                                                      "calibration": n_cal},
            "max_coverage": n_cal / (n_cal + 1)}
    fields = card.model_dump(exclude=set(COMPUTED_CARD_FIELDS))
    fields.update(updates)
    target = Path(output) if output is not None else art.directory
    save_model(net, target, fields, Calibration(card.task, meta, calibration.tensors(), card.class_names), meta)
    return CalibrationReport(card.name, target, {k: len(v) for k, v in parts.items()}, temperature, tau,
                             n_cal / (n_cal + 1), bounds, ood_threshold)


def _calibrate_regression(net: Any, engine: MCEngine, density_rows: tuple[Tensor, Tensor], calibration: tuple[Tensor, Tensor],
                          task: Task, tau: float | None, n_samples: int, seed: int, dim: int, ood_tpr: float) -> Calibration:
    """Normalised conformal scores ``|y - mu| / sigma`` in both modes, and an OOD density when the model names its
    feature layers (one Gaussian per layer, standardised on the fit rows)."""
    from mcdrop.training.calibrate import features, ood_threshold, regression_conformal_tensors

    x_cal, y_cal = calibration
    tensors = regression_conformal_tensors(engine, x_cal, y_cal, n_samples, seed, task=task, tau=tau)
    meta: dict[str, Any] = {"mc_samples": n_samples, "seed": seed}
    layers = feature_layers(net)
    if layers:
        xa, xb = density_rows
        density = fit_feature_density(features(engine, xa, layers), torch.zeros(len(xa), dtype=torch.int64),
                                      features(engine, xb, layers), 1, dim)
        ood = density.score(features(engine, x_cal, layers)).double().numpy()
        meta.update({"feature_layers": layers, "density_dim": dim, "density_combine": density.combine, "ood_tpr": ood_tpr,
                     "ood_threshold": ood_threshold(ood, ood_tpr)})
        tensors.update(density.tensors())
    return Calibration(task, meta, tensors)
