"""A request's ``stop`` as :func:`mcdrop.uncertainty.prediction.predict` options: the decisions to settle, read from the
model's calibration exactly as :mod:`mcdrop.serving.decisions` will decide them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mcdrop.request import Mode
from mcdrop.schemas import RequestOptions
from mcdrop.uncertainty import conformal
from mcdrop.uncertainty.calibration import Calibration
from mcdrop.uncertainty.stopping import DecisionRule

__all__ = ["decision_rule", "stopping_options"]


def decision_rule(request: RequestOptions, calibration: Calibration | None, seed: int | Tensor, rows: Tensor
                  ) -> DecisionRule:
    """The class, and with ``stop="decision"`` the abstention threshold (``max_c p_c < 1 - t``) and the conformal
    set (threshold ``q``, the rows' uniforms) the answer will carry. Shape: rows ``(B,)``."""
    if request.stop != "decision" or calibration is None:
        return DecisionRule()
    mode = Mode(request.mode)
    confidence = None
    if mode.value in calibration.selective:
        confidence = 1.0 - calibration.uncertainty_threshold(mode, request.selective_risk, request.selective_coverage)
    if request.coverage is None:
        return DecisionRule(confidence)
    q = calibration.conformal_threshold(mode, request.set_method, request.coverage)
    u = conformal.keyed_uniforms(seed, rows.to(torch.int64).cpu())
    return DecisionRule(confidence, request.set_method, q, u, calibration.lam, calibration.k_reg)


def stopping_options(request: RequestOptions, calibration: Calibration | None, seed: int | Tensor, rows: Tensor
                     ) -> dict[str, Any]:
    """``stop``, ``delta`` and ``rule`` for ``predict`` (nothing when the request has no ``stop``)."""
    if request.stop is None:
        return {}
    return {"stop": request.stop, "delta": request.delta, "rule": decision_rule(request, calibration, seed, rows)}
