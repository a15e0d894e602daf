"""A request's decisions from its rows' summaries and the model's calibration: ``ood_score``, the conformal
``prediction_set`` (classification) or ``conformal_low/high`` (regression), ``abstain`` and its reasons.

An input is withheld when its ``ood_score`` is above the threshold that passes ``ood_tpr`` of held-out
in-distribution inputs (``out_of_distribution``), or (classification) when its uncertainty ``1 - confidence`` is
above the threshold for the request's ``selective_risk`` or ``selective_coverage``, by default the card's
``default_risk`` (``uncertain``).  Thresholds are per mode: MC mode's were fitted at the card's N.  The
calibration (:class:`~mcdrop.uncertainty.calibration.Calibration`) holds the fitted data and thresholds; this
module applies them to one request's arrays, in the columns of :class:`~mcdrop.schemas.PredictResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mcdrop.plan import Plan
from mcdrop.request import Mode, Task
from mcdrop.uncertainty import conformal
from mcdrop.uncertainty.calibration import Calibration

__all__ = ["Decisions", "decisions"]


@dataclass
class Decisions:
    """One request's decision columns (``{field: (n,) or (n, C)}``) and notes on fields left null."""

    columns: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


def decisions(calibration: Calibration, plan: Plan, *, ood: Tensor | None = None,
              probabilities: Tensor | None = None, confidence: Tensor | None = None,
              mean: Tensor | None = None, std: Tensor | None = None) -> Decisions:
    """One plan's decisions from explicit arrays: ``ood`` scores ``(n,)``; for a classifier the mean
    ``probabilities`` ``(n, C)`` and ``confidence`` ``(n,)``, for a regressor the predictive ``mean`` and ``std``
    ``(n,)``.  Conformal intervals are ``mean -+ q std``."""
    req, n = plan.request, len(plan)
    mode = Mode(req.mode)
    cols: dict[str, np.ndarray] = {}
    notes: list[str] = []
    flag_ood = np.zeros(n, dtype=bool)
    flag_unc = np.zeros(n, dtype=bool)
    if ood is not None:
        cols["ood_score"] = ood.numpy()
        if calibration.ood_threshold is not None:
            flag_ood = cols["ood_score"] > calibration.ood_threshold
    n_cal = calibration.meta.get("mc_samples")
    if mode is Mode.MC and n_cal and req.n_samples != n_cal and req.tolerance is None:
        notes.append(f"thresholds were calibrated at n_samples={n_cal}; at n_samples={req.n_samples} the "
                     "stated coverage and risk hold approximately")
    if calibration.task is Task.CLASSIFICATION:
        assert probabilities is not None and confidence is not None
        if req.coverage is not None:
            q = calibration.conformal_threshold(mode, req.set_method, req.coverage)
            u = None
            if req.set_method in conformal.RANDOMIZED:
                if plan.seed is None:
                    raise ValueError(f"set_method {req.set_method!r} draws keyed uniforms: the plan needs a seed")
                rows = torch.arange(req.row_offset, req.row_offset + n, dtype=torch.int64)
                u = conformal.keyed_uniforms(plan.seed, rows)
            cols["prediction_set"] = conformal.prediction_sets(probabilities, req.set_method, q, u, calibration.lam,
                                                               calibration.k_reg).numpy()
        if mode.value in calibration.selective:
            t = calibration.uncertainty_threshold(mode, req.selective_risk, req.selective_coverage)
            flag_unc = (1.0 - confidence.double()).numpy() > t
        else:
            notes.append(f"no abstention data for {mode.value} mode: abstain reflects out_of_distribution only")
    elif req.coverage is not None:
        assert mean is not None and std is not None
        q = calibration.conformal_threshold(mode, "", req.coverage)
        m, s = mean.double().numpy(), std.double().numpy()
        cols["conformal_low"], cols["conformal_high"] = m - q * s, m + q * s
    if ood is not None or calibration.task is Task.CLASSIFICATION:
        cols["abstain"] = flag_ood | flag_unc
        cols["abstain_out_of_distribution"], cols["abstain_uncertain"] = flag_ood, flag_unc
    return Decisions(cols, notes)
