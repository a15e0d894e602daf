"""One result, one field table: predictions as NumPy columns, and everything derived from the table.

:data:`CLASSIFICATION_FIELDS` and :data:`REGRESSION_FIELDS` list every per-row field once: its name, kind, whether
it is always present, where it comes from and what it means.  From them come the typed JSON rows
(:class:`ClassificationPrediction`, :class:`RegressionPrediction`), a result's rows (:meth:`PredictResult.predictions`)
and its columns read back from a response (:meth:`PredictResult.from_response`), the predictor's summary columns
(:func:`summary_fields`); the writers and the ``.npy`` wire format carry a result's columns as they are.
Pure pydantic and NumPy: no torch.

Column conventions: a ``vector`` is ``(B, C)``; a conformal ``set`` is a boolean mask ``(B, C)``; the ``reasons``
of abstaining are boolean columns ``abstain_<reason>``; ``class_name`` and ``prediction_set_names`` are not
columns but read from the class names; a field null for every row (e.g. mutual information in deterministic
mode) is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from mcdrop.request import Mode, Task

__all__ = [
    "CLASSIFICATION_FIELDS",
    "REGRESSION_FIELDS",
    "AbstainReason",
    "ClassificationPrediction",
    "Column",
    "PredictResponse",
    "PredictResult",
    "RegressionPrediction",
    "summary_fields",
]

AbstainReason = Literal["out_of_distribution", "uncertain"]
REASONS: tuple[AbstainReason, ...] = ("out_of_distribution", "uncertain")

Kind = Literal["int", "float", "vector", "text", "set", "names", "flag", "reasons"]
_TYPES: dict[str, Any] = {"int": int, "float": float, "vector": list[float], "text": str, "set": list[int],
                          "names": list[str], "flag": bool, "reasons": list[AbstainReason]}


@dataclass(frozen=True)
class Column:
    """One per-row field.

    Attributes:
        name: the field's name in JSON, CSV, ``.npz`` and the ``.npy`` wire format.
        kind: its values (see the module docs for ``set``, ``reasons``, ``text`` and ``names``).
        always: present in every answer (else null where undefined, e.g. MC-only fields in deterministic mode).
        default: the JSON row may omit it (null); otherwise it is a required key, possibly null.
        source: ``summary`` (the MC summary), ``decision`` (:mod:`mcdrop.serving.decisions`) or ``names``.
        description: the JSON schema's description.
    """

    name: str
    kind: Kind
    always: bool = False
    default: bool = False
    source: Literal["summary", "decision", "names"] = "summary"
    description: str | None = None

    @property
    def annotation(self) -> Any:
        base = _TYPES[self.kind]
        return base if self.always else base | None

    @property
    def is_array(self) -> bool:
        return self.source != "names"


_N_SAMPLES = Column("n_samples", "int", always=True)
_OOD = Column("ood_score", "float", default=True, source="decision",
              description="the hidden layers' standardised negative log densities (and the logits' energy) combined as the "
                          "card says: about 0 for typical inputs, higher is more unusual (null when the model has "
                          "no density)")
_ABSTAIN = Column("abstain", "flag", default=True, source="decision",
                  description="whether to withhold this answer (null when uncalibrated)")
_REASONS = Column("abstain_reasons", "reasons", default=True, source="decision")

CLASSIFICATION_FIELDS: tuple[Column, ...] = (
    Column("predicted_class", "int", always=True),
    Column("class_name", "text", source="names"),
    Column("confidence", "float", always=True),
    Column("probabilities", "vector", always=True),
    Column("predictive_entropy", "float", always=True),
    Column("expected_entropy", "float"),
    Column("mutual_information", "float"),
    Column("variation_ratio", "float"),
    Column("probability_std", "vector"),
    Column("probability_stderr", "vector"),
    _N_SAMPLES,
    _OOD,
    Column("prediction_set", "set", default=True, source="decision",
           description="conformal prediction set (with coverage)"),
    Column("prediction_set_names", "names", default=True, source="names"),
    _ABSTAIN,
    _REASONS,
)
"""A classifier's fields, in the order of the JSON rows."""

REGRESSION_FIELDS: tuple[Column, ...] = (
    Column("mean", "float", always=True),
    Column("variance", "float", always=True),
    Column("std", "float", always=True),
    Column("epistemic_variance", "float"),
    Column("aleatoric_variance", "float", always=True),
    Column("interval_low", "float", always=True),
    Column("interval_high", "float", always=True),
    Column("level", "float", always=True),
    Column("mean_stderr", "float"),
    _N_SAMPLES,
    Column("ood_score", "float", default=True, source="decision"),
    Column("conformal_low", "float", default=True, source="decision", description="conformal interval (with coverage)"),
    Column("conformal_high", "float", default=True, source="decision"),
    Column("abstain", "flag", default=True, source="decision"),
    _REASONS,
)
"""A regressor's fields, in the order of the JSON rows."""


def fields_of(task: Task | str) -> tuple[Column, ...]:
    return CLASSIFICATION_FIELDS if Task(task) is Task.CLASSIFICATION else REGRESSION_FIELDS


def summary_fields(task: Task | str) -> list[str]:
    """The fields the MC summary gives (the predictor's columns before the decisions)."""
    return [c.name for c in fields_of(task) if c.source == "summary"]


def _prediction_model(name: str, doc: str, columns: tuple[Column, ...]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for c in columns:
        if c.default or c.description is not None:
            definitions[c.name] = (c.annotation, Field(None if c.default else ..., description=c.description))
        else:
            definitions[c.name] = (c.annotation, ...)
    model = create_model(name, __doc__=doc, __module__=__name__, **definitions)
    return model


if TYPE_CHECKING:  # the fields come from the table at run time: to a type checker, any attribute is a field
    class ClassificationPrediction(BaseModel):
        def __getattr__(self, name: str) -> Any: ...

    class RegressionPrediction(BaseModel):
        def __getattr__(self, name: str) -> Any: ...
else:
    ClassificationPrediction = _prediction_model(
        "ClassificationPrediction",
        "One input's class, probabilities and uncertainty (sampling-only fields null in deterministic mode).",
        CLASSIFICATION_FIELDS)
    RegressionPrediction = _prediction_model(
        "RegressionPrediction",
        "One input's predictive mean, variances and intervals (sampling-only fields null in deterministic mode).",
        REGRESSION_FIELDS)


class ColumnViews:
    """Named views of a result's columns, shared by the JSON response and :class:`PredictResult`."""

    def column(self, name: str) -> np.ndarray:
        raise NotImplementedError

    @property
    def probabilities(self) -> np.ndarray:
        """Mean class probabilities. Shape: ``(B, C)``."""
        return self.column("probabilities")

    @property
    def predicted_class(self) -> np.ndarray:
        return self.column("predicted_class").astype(np.int64, copy=False)

    @property
    def mean(self) -> np.ndarray:
        """Regression predictive means. Shape: ``(B,)``."""
        return self.column("mean")

    @property
    def n_samples(self) -> np.ndarray:
        return self.column("n_samples").astype(np.int64, copy=False)


class PredictResponse(ColumnViews, BaseModel):
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


class PredictResult(ColumnViews):
    """Predictions as NumPy columns (``{field: (B,) or (B, C)}``) with the response's metadata: what the
    predictor computes and the binary wire format carries; :meth:`response` gives the typed JSON form.
    Columns follow the conventions of the module docs.
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

    def meta(self) -> dict[str, Any]:
        """Everything but the columns, JSON-serialisable."""
        return {"model": self.model, "model_version": self.model_version, "task": self.task.value,
                "mode": self.mode.value, "seed": self.seed, "notes": self.notes, "class_names": self.class_names}

    @property
    def predictions(self) -> list[Any]:
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
            missing = np.isnan(a)
            if missing.any():  # null beyond an adaptive row's n_samples
                obj = a.astype(object)
                obj[missing] = None
                samples = obj.tolist()
            else:
                samples = a.tolist()
        return PredictResponse.model_construct(model=self.model, model_version=self.model_version, task=self.task,
                                               mode=self.mode, seed=self.seed, predictions=self.predictions,
                                               samples=samples, notes=self.notes)

    @classmethod
    def from_response(cls, response: PredictResponse, class_names: list[str] | None = None) -> PredictResult:
        """The columns of a JSON response (the inverse of :meth:`predictions`)."""
        preds: list[Any] = list(response.predictions)
        columns: dict[str, np.ndarray] = {}
        for c in fields_of(response.task) if preds else ():
            values = [getattr(p, c.name) for p in preds]
            if not c.is_array or all(v is None for v in values):
                continue
            if c.kind == "set":
                mask = np.zeros((len(preds), len(preds[0].probabilities)), dtype=np.bool_)
                for i, v in enumerate(values):
                    mask[i, v or []] = True
                columns[c.name] = mask
            elif c.kind == "reasons":
                for reason in REASONS:
                    columns[f"abstain_{reason}"] = np.array([reason in (v or []) for v in values])
            elif c.kind == "flag":
                columns[c.name] = np.array([bool(v) for v in values])
            else:
                columns[c.name] = np.asarray([np.nan if v is None else v for v in values],
                                             dtype=np.int64 if c.kind == "int" else np.float64)
        samples = None
        if response.samples is not None:
            raw = np.asarray(response.samples, dtype=object)
            raw[raw == None] = np.nan  # noqa: E711 (elementwise: null beyond an adaptive row's n_samples)
            samples = raw.astype(np.float64)
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
            arrays = [p.samples for p in parts if p.samples is not None]
            depth = max(a.shape[0] for a in arrays)
            padded = [np.concatenate([a, np.full((depth - a.shape[0], *a.shape[1:]), np.nan)])
                      if a.shape[0] < depth else a for a in arrays]
            samples = np.concatenate(padded, axis=1)
        notes = list(dict.fromkeys(n for p in parts for n in p.notes))
        return cls(model=first.model, model_version=first.model_version, task=first.task, mode=first.mode,
                   seed=first.seed, columns=columns, samples=samples, notes=notes, class_names=first.class_names)


def _rows(result: PredictResult) -> list[Any]:
    """Typed predictions from columns, field by field of the table (absent columns become None)."""
    n, cols, names = len(result), result.columns, result.class_names
    lists = {k: v.tolist() for k, v in cols.items()}
    none: list[Any] = [None] * n
    values: dict[str, list[Any]] = {}
    for c in fields_of(result.task):
        if c.kind == "set":
            values[c.name] = [np.flatnonzero(m).tolist() for m in cols[c.name]] if c.name in cols else none
        elif c.kind == "reasons":
            present = all(f"abstain_{r}" in lists for r in REASONS)
            values[c.name] = ([[r for r in REASONS if lists[f"abstain_{r}"][i]] for i in range(n)] if present
                              else none)
        elif c.kind == "text":
            values[c.name] = [names[k] for k in lists["predicted_class"]] if names else none
        elif c.kind == "names":
            sets = values.get("prediction_set", none)
            values[c.name] = [[names[k] for k in s] for s in sets] if names and sets is not none else none
        else:
            values[c.name] = lists[c.name] if c.always else lists.get(c.name, none)
    model = ClassificationPrediction if result.task is Task.CLASSIFICATION else RegressionPrediction
    return [model.model_construct(**{k: v[i] for k, v in values.items()}) for i in range(n)]
