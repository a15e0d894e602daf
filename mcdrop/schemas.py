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
AbstainReason = Literal["out_of_distribution", "uncertain"]


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


class ClassificationPrediction(BaseModel):
    """One input's class, probabilities and uncertainty (sampling-only fields null in deterministic mode)."""

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
    ood_score: float | None = Field(None, description="negative log feature density: higher is more unusual "
                                                      "(null when the model has no density)")
    prediction_set: list[int] | None = Field(None, description="conformal prediction set (with coverage)")
    prediction_set_names: list[str] | None = None
    abstain: bool | None = Field(None, description="whether to withhold this answer (null when uncalibrated)")
    abstain_reasons: list[AbstainReason] | None = None


class RegressionPrediction(BaseModel):
    """One input's predictive mean, variances and intervals (sampling-only fields null in deterministic mode)."""

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
    ood_score: float | None = None
    conformal_low: float | None = Field(None, description="conformal interval (with coverage)")
    conformal_high: float | None = None
    abstain: bool | None = None
    abstain_reasons: list[AbstainReason] | None = None


class PredictResponse(BaseModel):
    """Per-input predictions with uncertainty, and views of them as NumPy arrays."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: str
    task: Task
    mode: Mode
    seed: int | None = Field(description="the seed the masks were drawn with (null in deterministic mode)")
    predictions: list[ClassificationPrediction] | list[RegressionPrediction]
    samples: list[Any] | None = Field(None, description="raw outputs (S, B, ...) with return_samples; null beyond an "
                                                        "adaptive row's n_samples")
    notes: list[str] = Field(default_factory=list, description="why fields a request asked for are null")

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


_REASONS: tuple[AbstainReason, ...] = ("out_of_distribution", "uncertain")
_INT_COLUMNS = frozenset({"predicted_class", "n_samples"})


class PredictResult:
    """Predictions as NumPy columns (``{field: (B,) or (B, C)}``) with the response's metadata: what the
    predictor computes and the binary wire format carries; :meth:`response` gives the typed JSON form.

    Column conventions beyond the response's fields: ``prediction_set`` is a boolean mask ``(B, C)``;
    ``abstain_reasons`` are boolean columns ``abstain_out_of_distribution`` and ``abstain_uncertain``; fields that
    are null for every row (e.g. mutual information in deterministic mode) are absent.
    """

    def __init__(self, *, model: str, model_version: str, task: Task | str, mode: Mode | str, seed: int | None,
                 columns: dict[str, np.ndarray], samples: np.ndarray | None = None, notes: list[str] | None = None,
                 class_names: list[str] | None = None) -> None:
        self.model, self.model_version, self.task, self.mode = model, model_version, Task(task), Mode(mode)
        self.seed, self.columns, self.samples = seed, columns, samples
        self.notes, self.class_names = list(notes or []), class_names

    def __len__(self) -> int:
        return len(self.columns["n_samples"])

    def column(self, name: str) -> np.ndarray:
        """One field of every row as an array; a field absent in this result (null) is all NaN."""
        if name in self.columns:
            return self.columns[name]
        return np.full(len(self), np.nan)

    @property
    def probabilities(self) -> np.ndarray:
        """Mean class probabilities. Shape: ``(B, C)``."""
        return self.columns["probabilities"]

    @property
    def predicted_class(self) -> np.ndarray:
        return self.columns["predicted_class"]

    @property
    def mean(self) -> np.ndarray:
        """Regression predictive means. Shape: ``(B,)``."""
        return self.columns["mean"]

    @property
    def n_samples(self) -> np.ndarray:
        return self.columns["n_samples"]

    def meta(self) -> dict[str, Any]:
        """Everything but the columns, JSON-serialisable."""
        return {"model": self.model, "model_version": self.model_version, "task": self.task.value,
                "mode": self.mode.value, "seed": self.seed, "notes": self.notes, "class_names": self.class_names}

    @property
    def predictions(self) -> list[ClassificationPrediction] | list[RegressionPrediction]:
        """The rows as typed predictions (built on first use)."""
        cached = getattr(self, "_predictions", None)
        if cached is None:
            cached = self._predictions = _rows(self)
        return cached

    def response(self) -> PredictResponse:
        """The JSON response model."""
        samples = None
        if self.samples is not None:
            a = self.samples.astype(np.float64)
            samples = np.where(np.isnan(a), None, a).tolist() if np.isnan(a).any() else a.tolist()
        return PredictResponse.model_construct(model=self.model, model_version=self.model_version, task=self.task,
                                               mode=self.mode, seed=self.seed, predictions=self.predictions,
                                               samples=samples, notes=self.notes)

    @classmethod
    def from_response(cls, response: PredictResponse, class_names: list[str] | None = None) -> PredictResult:
        preds = response.predictions
        columns: dict[str, np.ndarray] = {}
        if preds:
            fields = type(preds[0]).model_fields
            for name in fields:
                values = [getattr(p, name) for p in preds]
                if name in ("class_name", "prediction_set_names") or all(v is None for v in values):
                    continue
                if name == "prediction_set":
                    width = len(preds[0].probabilities)  # type: ignore[union-attr]
                    mask = np.zeros((len(preds), width), dtype=bool)
                    for i, v in enumerate(values):
                        mask[i, v or []] = True
                    columns[name] = mask
                elif name == "abstain_reasons":
                    for reason in _REASONS:
                        columns[f"abstain_{reason}"] = np.array([reason in (v or []) for v in values])
                elif name == "abstain":
                    columns[name] = np.array([bool(v) for v in values])
                else:
                    columns[name] = np.asarray([np.nan if v is None else v for v in values],
                                               dtype=np.int64 if name in _INT_COLUMNS else np.float64)
        samples = None
        if response.samples is not None:
            samples = np.asarray(response.samples, dtype=object)
            samples = np.where(samples == None, np.nan, samples).astype(np.float64)  # noqa: E711
        return cls(model=response.model, model_version=response.model_version, task=response.task, mode=response.mode,
                   seed=response.seed, columns=columns, samples=samples, notes=response.notes, class_names=class_names)

    @classmethod
    def concat(cls, parts: list[PredictResult]) -> PredictResult:
        """Results of consecutive slices of one input as one result (samples joined along rows)."""
        first = parts[0]
        if len(parts) == 1:
            return first
        columns = {k: np.concatenate([p.columns[k] for p in parts]) for k in first.columns}
        samples = None
        if all(p.samples is not None for p in parts):
            depth = max(p.samples.shape[0] for p in parts)  # type: ignore[union-attr]
            padded = [np.concatenate([p.samples, np.full((depth - p.samples.shape[0], *p.samples.shape[1:]), np.nan)])
                      if p.samples.shape[0] < depth else p.samples for p in parts]  # type: ignore[union-attr]
            samples = np.concatenate(padded, axis=1)
        notes = list(dict.fromkeys(n for p in parts for n in p.notes))
        return cls(model=first.model, model_version=first.model_version, task=first.task, mode=first.mode,
                   seed=first.seed, columns=columns, samples=samples, notes=notes, class_names=first.class_names)


def _rows(result: PredictResult) -> list[ClassificationPrediction] | list[RegressionPrediction]:
    """Typed predictions from columns: every response field mapped explicitly (absent columns become None)."""
    n, cols = len(result), result.columns
    lists = {k: v.tolist() for k, v in cols.items()}
    none: list[Any] = [None] * n
    if "abstain_out_of_distribution" in lists:
        reasons = [[r for r in _REASONS if lists[f"abstain_{r}"][i]] for i in range(n)]
    else:
        reasons = none
    common = {"n_samples": lists["n_samples"], "ood_score": lists.get("ood_score", none),
              "abstain": lists.get("abstain", none), "abstain_reasons": reasons}
    if result.task is Task.CLASSIFICATION:
        names = result.class_names
        sets = [np.flatnonzero(m).tolist() for m in cols["prediction_set"]] if "prediction_set" in cols else none
        fields = {
            "predicted_class": lists["predicted_class"],
            "class_name": [names[c] for c in lists["predicted_class"]] if names else none,
            "confidence": lists["confidence"], "probabilities": lists["probabilities"],
            "predictive_entropy": lists["predictive_entropy"],
            **{k: lists.get(k, none) for k in ("expected_entropy", "mutual_information", "variation_ratio",
                                               "probability_std", "probability_stderr")},
            "prediction_set": sets,
            "prediction_set_names": [[names[c] for c in s] for s in sets] if names and sets is not none else none,
            **common,
        }
        return [ClassificationPrediction.model_construct(**{k: v[i] for k, v in fields.items()}) for i in range(n)]
    fields = {
        **{k: lists[k] for k in ("mean", "variance", "std", "aleatoric_variance", "interval_low", "interval_high",
                                 "level")},
        **{k: lists.get(k, none) for k in ("epistemic_variance", "mean_stderr", "conformal_low", "conformal_high")},
        **common,
    }
    return [RegressionPrediction.model_construct(**{k: v[i] for k, v in fields.items()}) for i in range(n)]


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
