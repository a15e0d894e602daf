"""One object from request to response: models + engine + uncertainty -> :class:`PredictResponse`.

The service, the CLI and the client's server all go through :class:`Predictor`; none computes anything
itself.  :meth:`Predictor.predict_many` answers several requests with one engine call per compatible
group (same model, mode, N, level; not adaptive): each row keeps its own request's seed and its position
``row_offset + i``, so every answer equals the one its request would get alone (within float32 rounding).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcdrop import rng
from mcdrop.artifacts import DEFAULT_MODEL, load_model
from mcdrop.engine import MCEngine, Mode
from mcdrop.models import DropoutMLP
from mcdrop.schemas import (
    ClassificationPrediction,
    Limits,
    ModelCard,
    PredictRequest,
    PredictResponse,
    RegressionPrediction,
    Task,
)
from mcdrop.uncertainty import ClassificationSummary, RegressionSummary

__all__ = ["Predictor", "RequestError", "limits_from_env"]


class RequestError(ValueError):
    """A request the predictor refuses; ``field`` names the offending field (HTTP 4xx)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def limits_from_env() -> Limits:
    """Limits from ``MCDROP_MAX_ROWS``, ``MCDROP_MAX_SAMPLES``, ``MCDROP_MAX_BODY_BYTES`` (defaults otherwise)."""
    values = {
        "max_rows": "MCDROP_MAX_ROWS",
        "max_samples": "MCDROP_MAX_SAMPLES",
        "max_body_bytes": "MCDROP_MAX_BODY_BYTES",
    }
    return Limits(**{k: int(os.environ[v]) for k, v in values.items() if os.environ.get(v)})


@dataclass
class _Served:
    model: DropoutMLP
    card: ModelCard
    engine: MCEngine


class Predictor:
    """Serves one or more models from ``models/`` (or paths), the first being the default.

    Args:
        models: names or paths; default: the bundled default model.
        limits: request limits.
        element_budget: the engine's chunk budget.
    """

    def __init__(
        self, models: Sequence[str] | None = None, *, limits: Limits | None = None, element_budget: int = 1 << 24
    ) -> None:
        self.limits = limits or Limits()
        self._served: dict[str, _Served] = {}
        for ref in models or [DEFAULT_MODEL]:
            model, card = load_model(ref)
            self._served[card.name] = _Served(model, card, MCEngine(model, element_budget=element_budget))
        self.default = next(iter(self._served))

    @property
    def cards(self) -> list[ModelCard]:
        return [s.card for s in self._served.values()]

    def card(self, name: str | None = None) -> ModelCard:
        return self._get(name).card

    def _get(self, name: str | None) -> _Served:
        if name is None:
            return self._served[self.default]
        if name not in self._served:
            raise RequestError(f"unknown model {name!r}: this server serves {', '.join(self._served)}", "model", 404)
        return self._served[name]

    # ------------------------------------------------------------------ validation

    def validate(self, request: PredictRequest) -> _Served:
        """Check a request against the model and the limits; raise :class:`RequestError` naming the field."""
        served = self._get(request.model)
        rows = len(request.inputs)
        if rows > self.limits.max_rows:
            raise RequestError(
                f"inputs has {rows} rows, but this server accepts at most {self.limits.max_rows} per "
                "request (split the batch; the client does it for you)",
                "inputs",
                413,
            )
        width = served.card.input_size
        for i, row in enumerate(request.inputs):
            if len(row) != width:
                raise RequestError(
                    f"inputs[{i}] has {len(row)} values, but model {served.card.name!r} expects {width} features per row",
                    "inputs",
                )
        if request.mode == "mc":
            cap = self.limits.max_samples
            if request.n_samples > cap:
                raise RequestError(f"n_samples is {request.n_samples}, but this server allows at most {cap}", "n_samples")
            if request.max_samples is not None and request.max_samples > cap:
                raise RequestError(f"max_samples is {request.max_samples}, but this server allows at most {cap}", "max_samples")
            if request.max_samples is not None and request.max_samples < request.n_samples:
                raise RequestError(
                    f"max_samples ({request.max_samples}) must be at least n_samples ({request.n_samples})",
                    "max_samples",
                )
        if request.row_offset + rows > rng.MAX_ROWS:
            raise RequestError(f"row_offset + rows must stay below 2**31, but got {request.row_offset + rows}", "row_offset")
        return served

    # ------------------------------------------------------------------ prediction

    def predict(self, request: PredictRequest) -> PredictResponse:
        """Answer one request."""
        return self.predict_many([request])[0]

    def predict_many(self, requests: Sequence[PredictRequest]) -> list[PredictResponse | RequestError]:
        """Answer several requests, merging compatible ones into one engine call; invalid ones get their error."""
        answers: list[PredictResponse | RequestError | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, req in enumerate(requests):
            try:
                self.validate(req)
            except RequestError as err:
                answers[i] = err
                continue
            key = (
                req.model or self.default,
                req.mode,
                req.n_samples if req.mode == "mc" else 0,
                req.level,
                req.return_samples,
                i if req.tolerance is not None else -1,
            )
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            group = [requests[i] for i in indices]
            for i, response in zip(indices, self._predict_group(group), strict=True):
                answers[i] = response
        return answers  # type: ignore[return-value]

    def predict_array(
        self, x: np.ndarray | Tensor | Sequence[Sequence[float]], *, model: str | None = None, **options: Any
    ) -> PredictResponse:
        """Score an array ``(B, D)`` with the request options (``mode``, ``n_samples``, ``seed``, ...)."""
        served = self._get(model)
        tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
        request = PredictRequest.model_construct(inputs=[], model=model, **{**_defaults(), **options})
        if tensor.dim() != 2 or tensor.shape[1] != served.card.input_size:
            raise RequestError(
                f"inputs must have shape (rows, {served.card.input_size}), but got {tuple(tensor.shape)}", "inputs"
            )
        if not torch.isfinite(tensor).all():
            bad = int(torch.nonzero(~torch.isfinite(tensor).all(1))[0])
            raise RequestError(f"inputs[{bad}] holds NaN or infinity (or exceeds the float32 range); expected finite "
                               "numbers", "inputs")
        answer = self._run(served, [request], tensor, [tensor.shape[0]])[0]
        if isinstance(answer, RequestError):
            raise answer
        return answer

    def _predict_group(self, group: list[PredictRequest]) -> list[PredictResponse | RequestError]:
        served = self._get(group[0].model)
        x = torch.tensor([row for req in group for row in req.inputs], dtype=torch.float32)
        return self._run(served, group, x, [len(req.inputs) for req in group])

    def _run(
        self, served: _Served, group: list[PredictRequest], x: Tensor, sizes: list[int]
    ) -> list[PredictResponse | RequestError]:
        first = group[0]
        mode = Mode(first.mode)
        seeds = [req.seed if req.seed is not None else rng.new_seed() for req in group]
        rows = torch.cat([torch.arange(req.row_offset, req.row_offset + n) for req, n in zip(group, sizes, strict=True)])
        row_seeds = torch.cat([torch.full((n,), s, dtype=torch.int64) for s, n in zip(seeds, sizes, strict=True)])
        result = served.engine.run(
            x,
            mode=mode,
            n_samples=first.n_samples,
            seed=row_seeds if len(group) > 1 else seeds[0],
            rows=rows,
            tolerance=first.tolerance,
            max_samples=first.max_samples or (self.limits.max_samples if first.tolerance else None),
            level=first.level,
            return_samples=first.return_samples,
        )
        predictions = _predictions(result.summary, served.card)
        finite = _finite_rows(result.summary)
        responses: list[PredictResponse | RequestError] = []
        start = 0
        for req, seed, n in zip(group, seeds, sizes, strict=True):
            if not finite[start : start + n].all():
                bad = int(torch.nonzero(~finite[start : start + n])[0])
                responses.append(RequestError(
                    f"inputs[{bad}] (row {req.row_offset + bad}): the model's output overflowed to NaN or infinity; "
                    "the input lies far outside the range the model was trained on", "inputs", 422))
                start += n
                continue
            samples = None
            if req.return_samples and result.samples is not None:
                chunk = result.samples[:, start : start + n]
                samples = _json_samples(chunk)
            responses.append(
                PredictResponse(
                    model=served.card.name,
                    model_version=served.card.version,
                    task=served.card.task,
                    mode=req.mode,
                    seed=seed if mode is Mode.MC else None,
                    predictions=predictions[start : start + n],
                    samples=samples,
                )
            )
            start += n
        return responses


def _finite_rows(summary: ClassificationSummary | RegressionSummary) -> Tensor:
    """``(B,)``: whether each row's prediction is finite (an input far out of range can overflow float32)."""
    if isinstance(summary, ClassificationSummary):
        return torch.isfinite(summary.probabilities).all(1)
    return torch.isfinite(summary.mean) & torch.isfinite(summary.variance)


def _defaults() -> dict[str, Any]:
    return {name: f.default for name, f in PredictRequest.model_fields.items() if name not in ("inputs", "model")}


def _floats(t: Tensor | None) -> list[Any]:
    if t is None:
        return []
    return t.double().tolist()


def _predictions(
    summary: ClassificationSummary | RegressionSummary, card: ModelCard
) -> list[ClassificationPrediction] | list[RegressionPrediction]:
    b = summary.n_samples.shape[0]
    columns = {
        name: (_floats(value) if isinstance(value, Tensor) else [value] * b)
        for name, value in vars(summary).items()
        if value is not None
    }
    if "level" in columns:
        columns["level"] = [summary.level] * b  # type: ignore[union-attr]
    rows = [{name: col[i] for name, col in columns.items()} for i in range(b)]
    if card.task is Task.CLASSIFICATION:
        out_c = []
        for row in rows:
            row["predicted_class"] = int(row["predicted_class"])
            row["n_samples"] = int(row["n_samples"])
            names = card.class_names
            row["class_name"] = names[row["predicted_class"]] if names else None
            out_c.append(ClassificationPrediction.model_validate({**_nones(ClassificationPrediction), **row}))
        return out_c
    out_r = []
    for row in rows:
        row["n_samples"] = int(row["n_samples"])
        out_r.append(RegressionPrediction.model_validate({**_nones(RegressionPrediction), **row}))
    return out_r


def _nones(cls: type) -> dict[str, None]:
    return dict.fromkeys(cls.model_fields)  # type: ignore[attr-defined]


def _json_samples(samples: Tensor) -> list[Any]:
    """Samples as nested lists; NaN (beyond an adaptive row's N) becomes None."""
    a = samples.double().numpy()
    if not np.isnan(a).any():
        return a.tolist()
    return np.where(np.isnan(a), None, a).tolist()
