"""Request, response and model-card schemas, defined once and shared by the service, the client and the CLI.

Pure pydantic and NumPy: importing this module imports neither torch nor BentoML.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ClassificationPrediction",
    "ErrorResponse",
    "Limits",
    "ModelCard",
    "ModelsResponse",
    "PredictRequest",
    "PredictResponse",
    "RegressionPrediction",
    "Task",
]

FLOAT32_MAX = 3.4028234663852886e38
# A finite number that float32 (the models' dtype) can hold.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


class Task(StrEnum):
    """What a model predicts (the values of :class:`mcdrop.models.Head`)."""

    CLASSIFICATION = "classification"
    HOMOSCEDASTIC = "homoscedastic"
    HETEROSCEDASTIC = "heteroscedastic"


class Limits(BaseModel):
    """Server-side limits on one request (configured by environment variables, see README)."""

    max_rows: int = Field(1024, ge=1, description="rows per request (MCDROP_MAX_ROWS)")
    max_samples: int = Field(2000, ge=1, description="MC passes per request, also the adaptive cap (MCDROP_MAX_SAMPLES)")
    max_body_bytes: int = Field(16 << 20, ge=1024, description="request body size (MCDROP_MAX_BODY_BYTES)")


class ModelCard(BaseModel):
    """What a shipped model is, how it was trained and how well it does (``models/<name>/card.json``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    version: str
    task: Task
    description: str = ""
    architecture: dict[str, Any]
    input_shape: list[int]
    input_size: int
    normalisation: str
    class_names: list[str] | None = None
    tau: float | None = None
    temperature: float | None = None
    training: dict[str, Any] = {}
    data: str = ""
    metrics: dict[str, Any] = {}
    created: str
    library_version: str
    weights_file: str = "weights.safetensors"
    weights_sha256: str
    parameter_shapes: dict[str, list[int]]


class ModelsResponse(BaseModel):
    """The body of ``GET /models``: the served models' cards, the default model's name and the limits."""

    model_config = ConfigDict(protected_namespaces=())

    default: str
    limits: Limits
    models: list[ModelCard]

    def card(self, name: str | None = None) -> ModelCard:
        """The card of ``name`` (default: the default model)."""
        name = name or self.default
        for card in self.models:
            if card.name == name:
                return card
        raise KeyError(f"unknown model {name!r}: the server serves {', '.join(c.name for c in self.models)}")


def _openapi30_bounds(schema: dict[str, Any]) -> None:
    """Rewrite JSON Schema 2020 exclusive bounds (``exclusiveMaximum: 1``) in the OpenAPI 3.0 form
    (``maximum: 1, exclusiveMaximum: true``) that the service's OpenAPI 3.0 document needs."""
    for prop in schema.get("properties", {}).values():
        for node in [prop, *prop.get("anyOf", [])]:
            for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                value = node.get(bound)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    node[plain], node[bound] = value, True


class PredictRequest(BaseModel):
    """A batch of inputs to score.  Row masks depend on (seed, row_offset + row index, sample index)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra=_openapi30_bounds)

    inputs: list[list[FiniteFloat]] = Field(..., min_length=1, description="rows of input features")
    model: str | None = Field(None, description="name of a served model; default: the default model")
    mode: Literal["deterministic", "mc"] = "mc"
    n_samples: int = Field(50, ge=1, le=1_000_000, description="MC passes (first round when adaptive)")
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the dropout masks; none: random")
    tolerance: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="adaptive sampling: stop when the MC standard error is below this"
    )
    max_samples: int | None = Field(None, ge=1, le=1_000_000, description="adaptive sampling cap")
    level: float = Field(0.95, gt=0, lt=1, description="central prediction-interval level (regression)")
    return_samples: bool = Field(False, description="also return raw per-sample outputs (S, B, ...)")
    row_offset: int = Field(0, ge=0, lt=2**31, description="position of the first row in the caller's data set")


class ClassificationPrediction(BaseModel):
    predicted_class: int
    class_name: str | None
    confidence: float
    probabilities: list[float]
    predictive_entropy: float
    expected_entropy: float | None
    mutual_information: float | None
    variation_ratio: float | None
    probability_std: list[float] | None
    probability_stderr: list[float] | None
    n_samples: int


class RegressionPrediction(BaseModel):
    mean: float
    variance: float
    std: float
    epistemic_variance: float | None
    aleatoric_variance: float
    interval_low: float
    interval_high: float
    level: float
    mean_stderr: float | None
    n_samples: int


class PredictResponse(BaseModel):
    """Per-input predictions with uncertainty, and views of them as NumPy arrays."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: str
    task: Task
    mode: Literal["deterministic", "mc"]
    seed: int | None
    predictions: list[ClassificationPrediction] | list[RegressionPrediction]
    samples: list[Any] | None = None

    def column(self, name: str) -> np.ndarray:
        """One field of every prediction as an array (None becomes NaN), e.g. ``column("mutual_information")``."""
        values = [getattr(p, name) for p in self.predictions]
        if values and isinstance(values[0], list):
            return np.asarray(values, dtype=np.float64)
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)

    @property
    def probabilities(self) -> np.ndarray:
        """Mean class probabilities. Shape: ``(B, C)``."""
        return self.column("probabilities")

    @property
    def predicted_class(self) -> np.ndarray:
        return self.column("predicted_class").astype(np.int64)

    @property
    def mean(self) -> np.ndarray:
        """Regression predictive means. Shape: ``(B,)``."""
        return self.column("mean")

    @property
    def n_samples(self) -> np.ndarray:
        return self.column("n_samples").astype(np.int64)


class ErrorResponse(BaseModel):
    """The body of every 4xx answer: what was wrong, and where."""

    error: str
    field: str | None = None
    detail: list[dict[str, Any]] | None = None
