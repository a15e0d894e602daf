"""A model's calibration: the OOD density and threshold, conformal scores and abstention data.

Everything here was fitted on data the model was not trained on (the card's ``calibration`` section says
which), and is stored beside the weights as ``calibration.safetensors`` (sha256-checked like them).
:meth:`Calibration.annotate` turns one prediction into the actionable fields of the response: ``ood_score``,
``prediction_set`` or ``conformal_low/high``, ``abstain`` and its reasons.

Abstention: an input is withheld when its ``ood_score`` is above the threshold that passes ``ood_tpr`` of
held-out in-distribution inputs (``out_of_distribution``), or (classification) when its uncertainty
``1 - confidence`` is above the threshold for the request's ``selective_risk`` or ``selective_coverage``,
by default the card's ``default_risk`` (``uncertain``).  Thresholds are per mode: MC mode's were fitted at
the card's N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcdrop.request import Mode, Task
from mcdrop.uncertainty import conformal, selective
from mcdrop.uncertainty.ood import FeatureDensity

__all__ = ["Annotations", "Calibration"]


@dataclass
class Annotations:
    """One request's actionable columns (``{field: (n,) or (n, C)}``, :class:`~mcdrop.schemas.PredictResult`
    conventions) and notes on fields left null."""

    columns: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


class Calibration:
    """The calibration of one model (see the module docs).

    Args:
        task: the model's task.
        meta: the card's ``calibration`` section (thresholds, feature layers, how it was fitted).
        tensors: the arrays of ``calibration.safetensors``.
        class_names: the classes' names, for ``prediction_set_names``.
    """

    def __init__(self, task: Task, meta: dict[str, Any], tensors: dict[str, Tensor],
                 class_names: Sequence[str] | None = None) -> None:
        self.task, self.meta, self.class_names = Task(task), meta, list(class_names or [])
        layers = meta.get("feature_layers") or []
        self.density = FeatureDensity.from_tensors(tensors, layers) if layers else None
        self.ood_threshold = float(meta["ood_threshold"]) if "ood_threshold" in meta else None
        reference = tensors.get("ood.calibration_scores")  # the calibration inputs' OOD scores (drift monitoring)
        self.ood_reference = reference.double().numpy() if reference is not None else None
        self.default_risk = float(meta.get("default_risk", 0.02))
        self.delta = float(meta.get("delta", 0.05))
        self.lam = float(meta.get("raps_lambda", conformal.RAPS_LAMBDA))
        self.k_reg = int(meta.get("raps_k_reg", conformal.RAPS_K_REG))
        self.scores = {k.removeprefix("conformal."): v.double().numpy() for k, v in tensors.items()
                       if k.startswith("conformal.")}
        for key in [k for k in self.scores if k.endswith((".aps", ".raps"))]:
            if f"{key}_randomized" not in self.scores:  # calibrated before non-randomised sets: randomised scores
                self.scores[f"{key}_randomized"] = self.scores.pop(key)
        self.selective = {mode: (tensors[f"selective.{mode}.uncertainty"].double().numpy(),
                                 tensors[f"selective.{mode}.errors"].double().numpy())
                          for mode in (m.value for m in Mode) if f"selective.{mode}.uncertainty" in tensors}
        self._threshold = lru_cache(maxsize=64)(self._compute_threshold)

    @property
    def feature_layers(self) -> list[str]:
        return list(self.density.layers) if self.density is not None else []

    def supports(self, what: str, mode: Mode | str, set_method: str | None = None) -> bool:
        """Whether ``coverage`` (with ``set_method``, for classifiers), ``selective_risk`` or ``selective_coverage``
        can be answered in ``mode``."""
        mode = Mode(mode).value
        if what == "coverage":
            if set_method is not None and self.task is Task.CLASSIFICATION:
                return f"{mode}.{set_method}" in self.scores
            return any(k.startswith(f"{mode}.") for k in self.scores)
        return self.task is Task.CLASSIFICATION and mode in self.selective

    def _compute_threshold(self, mode: str, risk: float | None, coverage: float | None) -> float:
        u, e = self.selective[mode]
        if coverage is not None:
            return selective.coverage_threshold(u, coverage)
        return selective.risk_threshold(u, e, risk if risk is not None else self.default_risk, self.delta)

    def uncertainty_threshold(self, mode: Mode | str, risk: float | None = None, coverage: float | None = None) -> float:
        """The abstention threshold on ``1 - confidence`` for a target selective risk or coverage."""
        return self._threshold(Mode(mode).value, risk, coverage)

    def conformal_threshold(self, mode: Mode | str, method: str, coverage: float) -> float:
        key = f"{Mode(mode).value}.{method if self.task is Task.CLASSIFICATION else 'regression'}"
        return conformal.conformal_quantile(self.scores[key], coverage)

    def annotate(self, summary: Any, features: dict[str, Tensor] | None, requests: Sequence[Any],
                 sizes: Sequence[int], seeds: Sequence[int | None]) -> list[Annotations]:
        """The actionable columns of each request in a group that shared one engine call."""
        ood = self.density.score(features).double() if self.density is not None and features else None
        out, start = [], 0
        for req, n, seed in zip(requests, sizes, seeds, strict=True):
            part = slice(start, start + n)
            start += n
            out.append(self._annotate_one(summary, ood, part, req, seed))
        return out

    def _annotate_one(self, summary: Any, ood: Tensor | None, part: slice, req: Any, seed: int | None) -> Annotations:
        n = part.stop - part.start
        mode = Mode(req.mode)
        cols: dict[str, np.ndarray] = {}
        notes: list[str] = []
        flag_ood = np.zeros(n, dtype=bool)
        flag_unc = np.zeros(n, dtype=bool)
        if ood is not None:
            cols["ood_score"] = ood[part].numpy()
            if self.ood_threshold is not None:
                flag_ood = cols["ood_score"] > self.ood_threshold
        n_cal = self.meta.get("mc_samples")
        if mode is Mode.MC and n_cal and req.n_samples != n_cal and req.tolerance is None:
            notes.append(f"thresholds were calibrated at n_samples={n_cal}; at n_samples={req.n_samples} the "
                         "stated coverage and risk hold approximately")
        if self.task is Task.CLASSIFICATION:
            if req.coverage is not None:
                q = self.conformal_threshold(mode, req.set_method, req.coverage)
                u = None
                if req.set_method in conformal.RANDOMIZED:
                    rows = torch.arange(req.row_offset, req.row_offset + n, dtype=torch.int64)
                    u = conformal.keyed_uniforms(seed if seed is not None else 0, rows)
                cols["prediction_set"] = conformal.prediction_sets(summary.probabilities[part], req.set_method, q, u,
                                                                   self.lam, self.k_reg).numpy()
            if mode.value in self.selective:
                t = self.uncertainty_threshold(mode, req.selective_risk, req.selective_coverage)
                flag_unc = (1.0 - summary.confidence[part].double()).numpy() > t
            else:
                notes.append(f"no abstention data for {mode.value} mode: abstain reflects out_of_distribution only")
        elif req.coverage is not None:
            q = self.conformal_threshold(mode, "", req.coverage)
            mean, std = summary.mean[part].double().numpy(), summary.std[part].double().numpy()
            cols["conformal_low"], cols["conformal_high"] = mean - q * std, mean + q * std
        if ood is not None or self.task is Task.CLASSIFICATION:
            cols["abstain"] = flag_ood | flag_unc
            cols["abstain_out_of_distribution"], cols["abstain_uncertain"] = flag_ood, flag_unc
        return Annotations(cols, notes)

    def tensors(self) -> dict[str, Tensor]:
        """The arrays to store (inverse of the constructor)."""
        out: dict[str, Tensor] = self.density.tensors() if self.density is not None else {}
        if self.ood_reference is not None:
            out["ood.calibration_scores"] = torch.from_numpy(np.ascontiguousarray(self.ood_reference))
        out.update({f"conformal.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.scores.items()})
        for mode, (u, e) in self.selective.items():
            out[f"selective.{mode}.uncertainty"] = torch.from_numpy(np.ascontiguousarray(u))
            out[f"selective.{mode}.errors"] = torch.from_numpy(np.ascontiguousarray(e))
        return out
