"""A model's calibration: the OOD density and threshold, conformal scores and abstention data.

Everything here was fitted on data the model was not trained on (the card's ``calibration`` section says
which), and is stored beside the weights as ``calibration.safetensors`` (sha256-checked like them).  A request's
decisions are drawn from it by :mod:`mcdrop.serving.decisions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcdrop.request import Mode, Task
from mcdrop.uncertainty import conformal, selective
from mcdrop.uncertainty.ood import FeatureDensity

__all__ = ["Calibration"]


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
        self.density = FeatureDensity.from_tensors(tensors, layers, str(meta.get("density_combine", "max")),
                                                   meta.get("density_energy_layer")) if layers else None
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
        """The modules whose deterministic outputs the OOD score reads (the logits' module last, if it is one)."""
        return self.density.captured if self.density is not None else []

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
