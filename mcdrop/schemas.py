"""Request, response and model-card schemas, defined once and shared by the service, the client and the CLI.

Pure pydantic and NumPy: importing this module imports neither torch nor BentoML.  The request's
vocabulary and defaults come from :mod:`mcdrop.request`; this module is the only place that validates a
request's shape.  Requests are strict: ``true`` or ``"0.5"`` is not a number and ``"50"`` not a count.
``inputs`` are checked in bulk with NumPy (a bad body of any size gets one short error naming the first bad
cell and the count of bad cells) and held as a float32 array ``(B, D)``.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mcdrop.request import (
    DEFAULT_LEVEL,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_N_SAMPLES,
    FLOAT32_MAX,
    MAX_ROW_POSITION,
    MAX_SEED,
    MIN_ADAPTIVE_SAMPLES,
    Mode,
    Task,
)
from mcdrop.result import (
    AbstainReason,
    ClassificationPrediction,
    PredictResponse,
    PredictResult,
    RegressionPrediction,
)

__all__ = [
    "FLOAT32_MAX",
    "AbstainReason",
    "AcquireMethod",
    "AcquireRequest",
    "AcquireResponse",
    "ClassificationPrediction",
    "ErrorResponse",
    "Limits",
    "ModelCard",
    "ModelsResponse",
    "PredictRequest",
    "PredictResponse",
    "PredictResult",
    "RegressionPrediction",
    "RequestOptions",
    "SetMethod",
    "Task",
    "as_rows",
]

MAX_NAME_LENGTH = 128


# ------------------------------------------------------------------------------------------------ inputs


def _cell(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_inputs", "{message}", {"message": message})


def as_rows(value: Any) -> np.ndarray:
    """``inputs`` as a float32 array ``(B, D)``, checked in bulk.

    Accepts a non-empty list of equally long lists of numbers (JSON), or a NumPy array of ints or floats
    ``(B, D)`` (or ``(B, h, w, ...)``, flattened).  Refuses booleans, strings, nulls, ragged rows, NaN, infinity
    and values beyond float32; the message names the first bad cell and counts the others.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise _fail(f"inputs: expected an array of numbers, but got dtype {value.dtype}")
        if value.ndim < 2 or value.shape[0] == 0 or value.size == 0:
            raise _fail(f"inputs: expected rows of features, shaped (rows, features), but got shape {value.shape}")
        array = value.reshape(value.shape[0], -1)
    elif isinstance(value, list):
        array = _list_rows(value)
    else:
        raise _fail(f"inputs: expected a list of rows of numbers, but got {type(value).__name__}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (np.abs(array) > FLOAT32_MAX)
    else:
        bad = np.abs(array.astype(np.float64)) > FLOAT32_MAX
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        count = int(bad.sum())
        more = f"; {count - 1} more values are out of range" if count > 1 else ""
        raise _fail(f"inputs[{i}][{j}] is {float(array[i, j])!r}: expected a finite number within the float32 range "
                    f"(±{FLOAT32_MAX:.8g}){more}")
    return array.astype(np.float32, copy=False)


def _list_rows(value: list[Any]) -> np.ndarray:
    if not value:
        raise _fail("inputs: expected at least one row of numbers, but got an empty list")
    for i, row in enumerate(value):
        if type(row) not in (list, tuple):
            raise _fail(f"inputs[{i}]: expected a row (a list of numbers), but got {type(row).__name__} {_cell(row)}")
    width = len(value[0])
    if width == 0:
        raise _fail("inputs[0]: expected at least one number per row, but got an empty row")
    for i, row in enumerate(value):
        if len(row) != width:
            raise _fail(f"inputs[{i}] has {len(row)} values, but inputs[0] has {width}: rows must have the same length")
    types = set(map(type, itertools.chain.from_iterable(value)))
    if not types <= {float, int}:
        cells = ((i, j, v) for i, row in enumerate(value) for j, v in enumerate(row))
        i, j, v = next(c for c in cells if type(c[2]) not in (float, int))
        count = sum(1 for row in value for v in row if type(v) not in (float, int))
        kind = {bool: "a boolean", str: "a string", type(None): "null"}.get(type(v), type(v).__name__)
        more = f"; {count - 1} more values are not numbers" if count > 1 else ""
        raise _fail(f"inputs[{i}][{j}]: expected a number, but got {kind} ({_cell(v)}){more}")
    try:
        return np.array(value, dtype=np.float64)
    except OverflowError as err:
        raise _fail(f"inputs: an integer is too large for float32 ({err})") from err


Inputs = Annotated[
    np.ndarray,
    BeforeValidator(as_rows),
    PlainSerializer(lambda a: a.tolist(), return_type=list, when_used="json"),
    WithJsonSchema({
        "type": "array", "minItems": 1, "description": "rows of input features (numbers within the float32 range)",
        "items": {"type": "array", "minItems": 1, "items": {"type": "number"}},
    }),
]


# ------------------------------------------------------------------------------------------------ requests


class Limits(BaseModel):
    """Server-side limits on one request (configured by environment variables, see README)."""

    max_rows: int = Field(DEFAULT_MAX_ROWS, ge=1, description="rows per request (MCDROP_MAX_ROWS)")
    max_samples: int = Field(DEFAULT_MAX_SAMPLES, ge=1,
                             description="MC passes per row, also the adaptive cap (MCDROP_MAX_SAMPLES)")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="request body size (MCDROP_MAX_BODY_BYTES)")
    max_cost: float | None = Field(None, gt=0, description="rows x passes x the model's multiply-adds per pass "
                                                           "(MCDROP_MAX_COST); None: no budget")
    timeout_s: float | None = Field(None, gt=0, description="seconds a request may take before it is cancelled "
                                                            "with 504 (MCDROP_REQUEST_TIMEOUT)")


SetMethod = Literal["aps", "raps", "lac", "aps_randomized", "raps_randomized"]


def _openapi30_bounds(schema: dict[str, Any]) -> None:
    """Rewrite JSON Schema 2020 exclusive bounds (``exclusiveMaximum: 1``) in the OpenAPI 3.0 form
    (``maximum: 1, exclusiveMaximum: true``) that the service's OpenAPI 3.0 document needs."""
    for prop in schema.get("properties", {}).values():
        for node in [prop, *prop.get("anyOf", [])]:
            for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                value = node.get(bound)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    node[plain], node[bound] = value, True


class RequestOptions(BaseModel):
    """Everything a prediction request says besides its inputs (the CLI's flags validate against this)."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=(), arbitrary_types_allowed=True,
                              json_schema_extra=_openapi30_bounds)

    model: str | None = Field(None, min_length=1, max_length=MAX_NAME_LENGTH,
                              description="name of a served model; default: the default model")
    mode: Mode = Field(Mode.MC, strict=False, description="deterministic (dropout off) or mc")
    n_samples: int = Field(DEFAULT_N_SAMPLES, ge=1, le=1_000_000, description="MC passes (first round when adaptive)")
    seed: int | None = Field(None, ge=0, lt=MAX_SEED, description="seed of the dropout masks; none: drawn and returned")
    tolerance: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description=f"adaptive sampling: add passes until the MC standard error is below this (at least "
                    f"{MIN_ADAPTIVE_SAMPLES} passes)")
    max_samples: int | None = Field(None, ge=1, le=1_000_000, description=f"adaptive sampling cap; at least n_samples "
                                    f"(with tolerance: at least max(n_samples, {MIN_ADAPTIVE_SAMPLES})), else 400")
    stop: Literal["decision", "class"] | None = Field(
        None, description="stop each row when its decisions will not change with more passes, with probability at "
                          "least 1 - delta: 'decision' settles the class, the conformal set and the abstention, 'class' "
                          "the class only; regression ('decision'): both interval ends known within 5% of the width "
                          "(a normal approximation); rounds start at 8 passes, max_samples caps them (mc mode)")
    delta: float = Field(1e-3, gt=0, lt=1, description="stop's risk: the chance that a row's settled decisions differ "
                                                       "from those of infinitely many passes")
    level: float = Field(DEFAULT_LEVEL, gt=0, lt=1, description="central prediction-interval level (regression)")
    coverage: float | None = Field(None, gt=0, lt=1, description="conformal prediction sets (classification) or "
                                                                 "intervals (regression) with this coverage")
    set_method: SetMethod = Field("aps", description="conformal score for prediction sets: aps, raps or lac (never "
                                                     "empty), aps_randomized or raps_randomized (may be empty)")
    selective_risk: float | None = Field(None, gt=0, lt=1, description="abstain so that the error rate among "
                                                                       "answered inputs stays below this")
    selective_coverage: float | None = Field(None, gt=0, le=1, description="abstain on the least certain inputs so "
                                                                           "that this share is answered")
    return_samples: bool = Field(False, description="also return raw per-sample outputs (S, B, ...)")
    row_offset: int = Field(0, ge=0, lt=MAX_ROW_POSITION, description="position of the first row in the caller's data set")

    @model_validator(mode="after")
    def _consistent(self) -> RequestOptions:
        if self.stop is not None:
            if self.mode is not Mode.MC or self.tolerance is not None:
                raise PydanticCustomError("stop", "stop applies to mc mode without tolerance", {})
            if self.n_samples != DEFAULT_N_SAMPLES:
                raise PydanticCustomError("n_samples", "n_samples applies to fixed N; with stop, rounds start at {first} "
                                          "passes and max_samples caps them", {"first": MIN_ADAPTIVE_SAMPLES})
        if self.max_samples is not None and self.stop is None:
            first = max(self.n_samples, MIN_ADAPTIVE_SAMPLES) if self.tolerance is not None else self.n_samples
            if self.max_samples < first:
                raise PydanticCustomError("max_samples", "max_samples ({m}) must be at least {what} ({first})",
                                          {"m": self.max_samples, "first": first,
                                           "what": "n_samples" if self.tolerance is None else
                                           f"the first adaptive round, max(n_samples, {MIN_ADAPTIVE_SAMPLES})"})
        if self.selective_risk is not None and self.selective_coverage is not None:
            raise PydanticCustomError("selective_risk", "give selective_risk or selective_coverage, not both", {})
        return self


class PredictRequest(RequestOptions):
    """A batch of inputs to score.  Row masks depend on (seed, row_offset + row index, sample index)."""

    inputs: Inputs

    @model_validator(mode="after")
    def _rows_fit(self) -> PredictRequest:
        rows = len(self.inputs)
        if self.row_offset + rows > MAX_ROW_POSITION:
            raise PydanticCustomError("row_offset", "row_offset + rows must stay below 2**31, but got {end}",
                                      {"end": self.row_offset + rows})
        return self


# ------------------------------------------------------------------------------------------------ responses
# The result and its rows are derived from one field table in mcdrop.result (re-exported here).

class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer: what was wrong, and where (bounded: at most 5 details)."""

    error: str
    field: str | None = None
    detail: list[dict[str, Any]] | None = Field(None, description="the first validation errors (loc, msg, type)")
    error_count: int | None = Field(None, description="how many validation errors the request had")


# ------------------------------------------------------------------------------------------------ models


class ModelCard(BaseModel):
    """What a shipped model is, how it was trained and how well it does (``<model>/card.json``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    version: str
    task: Task
    description: str = ""
    architecture: dict[str, Any]
    input_shape: list[int]
    input_size: int
    normalisation: str
    input_range: list[float] | None = Field(None, min_length=2, max_length=2, description="the range the model "
                                            "expects its inputs in, e.g. [0, 1] for pixels divided by 255")
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
    calibration_file: str | None = None
    calibration_sha256: str | None = None
    calibration: dict[str, Any] = Field(default_factory=dict, description="how thresholds and conformal scores were "
                                                                          "fitted, and on which data")
    cost: float | None = Field(None, description="multiply-adds of one forward pass of one row")


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


# ------------------------------------------------------------------------------------------------ acquisition

AcquireMethod = Literal["bald", "batchbald", "entropy", "margin", "random"]


class AcquireRequest(BaseModel):
    """A pool of unlabelled inputs and how many of them to label next (``POST /acquire``).

    The MC passes use consistent masks (one network per pass for every row), so a row's score does not depend
    on its position in the pool and BatchBALD's joint entropy is that of one network applied to the pool.
    """

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=(), arbitrary_types_allowed=True,
                              json_schema_extra=_openapi30_bounds)

    model: str | None = Field(None, min_length=1, max_length=MAX_NAME_LENGTH,
                              description="name of a served classifier; default: the default model")
    method: AcquireMethod = Field("bald", description="bald, batchbald (greedy, joint), entropy, margin or random")
    n_samples: int = Field(DEFAULT_N_SAMPLES, ge=1, le=1_000_000, description="MC passes (consistent masks)")
    seed: int | None = Field(None, ge=0, lt=MAX_SEED, description="seed of the masks (and of random / sampled "
                                                                  "configurations); none: drawn and returned")
    inputs: Inputs
    k: int = Field(ge=1, le=1_000_000, description="how many pool rows to return, best first")

    @field_validator("k")
    @classmethod
    def _k_fits(cls, k: int, info: ValidationInfo) -> int:
        inputs = info.data.get("inputs")
        if inputs is not None and k > len(inputs):
            raise PydanticCustomError("k_too_large", "k ({k}) must be at most the pool's {rows} rows",
                                      {"k": k, "rows": len(inputs)})
        return k


class AcquireResponse(BaseModel):
    """The ``k`` pool rows to label next, best first, with their scores (BatchBALD: the batch's value so far)."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: str
    method: AcquireMethod
    seed: int
    n_samples: int
    indices: list[int]
    scores: list[float]
