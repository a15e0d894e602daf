"""One object from request to response: models + engine + uncertainty -> :class:`PredictResult`.

The service, the CLI and the client's server all go through :class:`Predictor`; none computes anything
itself.  The request's shape was validated by its schema; :meth:`Predictor.plan` is the door: it checks only
what depends on the model and the server (row width, caps, the work budget, calibration), raising the typed
errors of :mod:`mcdrop.serving.errors`, and makes the request a :class:`~mcdrop.plan.Plan` (seed drawn, cap
resolved, cost counted) that everything below runs as it is.  :meth:`Predictor.predict_many` answers several
plans with one engine call per compatible group: each row keeps its own plan's seed and position
``row_offset + i``, so every answer equals the one its request would get alone (within float32 rounding, README
"Reproducibility").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from mcdrop.inputs import range_note
from mcdrop.nets.artifacts import DEFAULT_MODEL, ArtifactError, load_artifact
from mcdrop.plan import Plan, make_plan, needs_seed
from mcdrop.request import Mode, Task
from mcdrop.result import summary_fields
from mcdrop.sampling.engine import MCEngine, SamplingCancelled
from mcdrop.sampling.precision import apply_precision, check_precision
from mcdrop.sampling.runtime import resolve_device
from mcdrop.schemas import (
    Limits,
    ModelCard,
    PredictRequest,
    PredictResult,
    RequestOptions,
)
from mcdrop.serving.decisions import decisions
from mcdrop.serving.errors import Cancelled, InvalidRequest, OutputOverflow, PredictError, TooLarge, UnknownModel
from mcdrop.serving.stopping import stopping_options
from mcdrop.uncertainty.calibration import Calibration
from mcdrop.uncertainty.prediction import predict
from mcdrop.uncertainty.summaries import ClassificationSummary, RegressionSummary

__all__ = ["Predictor", "Served", "request_error"]

WARM_UP_RUNS = 5
WARM_UP_SECONDS = 0.2


@dataclass
class Served:
    """A model ready to serve: the network, its card and engine, and its calibration (or None)."""

    model: nn.Module  # one of mcdrop's models (DropoutMLP, DropoutCNN, an imported network)
    card: ModelCard
    engine: MCEngine
    calibration: Calibration | None
    rate: float = 0.0  # multiply-adds (the card's count) per second measured at start-up

    @property
    def cost(self) -> float:
        """Multiply-adds of one pass of one row (from the card; 1 if unknown)."""
        return float(self.card.cost or 1.0)


def request_error(err: ValidationError) -> InvalidRequest:
    """A schema violation as an :class:`InvalidRequest` naming the first field at fault."""
    first = err.errors(include_url=False)[0]
    loc = [str(part) for part in first.get("loc", ())]
    field = loc[0] if loc else first.get("type") if first.get("type") in PredictRequest.model_fields else None
    where = (loc[0] + "".join(f"[{p}]" for p in loc[1:])) if loc else field or "request"
    message = str(first.get("msg", "invalid"))
    text = message if message.startswith(where) else f"{where}: {message}"
    return InvalidRequest(text, field)


class Predictor:
    """Serves one or more models (names on the model path, or folders), the first being the default.

    Args:
        models: names or paths; default: the default model.
        limits: the server's request limits.
        element_budget: the engine's chunk budget (None: sized for the device).
        device: where the models run (:data:`mcdrop.sampling.runtime.DEVICES`); answers are computed on the CPU
            from the samples. Raises ValueError for a device this machine lacks.
        precision: float32 (default), tf32 (CUDA) or bfloat16 (:mod:`mcdrop.sampling.precision`); ValueError for one the
            device does not support.
    """

    def __init__(self, models: Sequence[str] | None = None, *, limits: Limits | None = None,
                 element_budget: int | None = None, device: str | None = None, precision: str | None = None) -> None:
        self.limits = limits or Limits()
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device)
        self._served: dict[str, Served] = {}
        for ref in models or [DEFAULT_MODEL]:
            artifact = load_artifact(ref)
            apply_precision(artifact.model.to(self.device), self.precision, self.device)
            if artifact.card.name in self._served:
                raise ArtifactError(f"two models are named {artifact.card.name!r}; model names must be unique")
            engine = MCEngine(artifact.model, element_budget=element_budget)
            self._served[artifact.card.name] = Served(artifact.model, artifact.card, engine, artifact.calibration)
        self.default = next(iter(self._served))
        self._rate: float | None = None

    @property
    def rate(self) -> float:
        """Multiply-adds per second of the slowest served model, measured by :meth:`warm_up` (on first use)."""
        if self._rate is None:
            self._rate = self.warm_up()
        return self._rate

    def warm_up(self) -> float:
        """Each engine's one-time work (probe, kernel build), then the throughput in multiply-adds per second (the
        card's cost per pass) of 256 random rows x 16 passes: the scheduler's first estimate, the slowest model's
        (large requests run in slices of about this size, so it is their rate; random rows activate more units
        than typical inputs do, so it errs low).  The service calls it before its first request; otherwise the
        first use of :attr:`rate` does.

        The rate is the best of two to ``WARM_UP_RUNS`` runs (more while under ``WARM_UP_SECONDS``): a small
        model's run takes about a millisecond, so one stall of the process (a busy machine at start-up) would
        otherwise price its largest requests hundreds of times too high, and only large work, which that price
        refuses, could correct it."""
        rates = []
        gen = torch.Generator().manual_seed(0)
        for served in self._served.values():
            x = torch.rand((256, served.card.input_size), generator=gen).to(self.device)
            served.engine.sample(x[:1], 2, seed=0)
            best, first = 0.0, time.perf_counter()
            for run in range(1, WARM_UP_RUNS + 1):
                start = time.perf_counter()
                served.engine.sample(x, 16, seed=0)
                best = max(best, 256 * 16 * served.cost / max(time.perf_counter() - start, 1e-6))
                if run >= 2 and time.perf_counter() - first >= WARM_UP_SECONDS:
                    break
            served.rate = best
            rates.append(served.rate)
        self._rate = min(rates)
        return self._rate

    @property
    def cards(self) -> list[ModelCard]:
        return [s.card for s in self._served.values()]

    def card(self, name: str | None = None) -> ModelCard:
        return self.served(name).card

    def served(self, name: str | None = None) -> Served:
        """The served model ``name`` (default: the default model); :class:`UnknownModel` otherwise."""
        if name is None:
            return self._served[self.default]
        if name not in self._served:
            raise UnknownModel(f"unknown model {name!r}: this server serves {', '.join(self._served)}", "model")
        return self._served[name]

    # ------------------------------------------------------------------ the door

    def plan(self, request: PredictRequest | Plan) -> Plan:
        """The door: check a valid request against its model and this server's limits (raise a
        :class:`PredictError`) and make it a :class:`~mcdrop.plan.Plan`: the seed drawn, the model named, the
        adaptive cap resolved, the cost counted.  A plan is returned as it is (it passed a door already)."""
        if isinstance(request, Plan):
            return request
        served = self.check_options(request)
        rows, width = request.inputs.shape
        if rows > self.limits.max_rows:
            raise TooLarge(f"inputs has {rows} rows, but this server accepts at most {self.limits.max_rows} per request "
                           "(split the batch; the client does it for you)", "inputs")
        if width != served.card.input_size:
            raise InvalidRequest(f"inputs rows have {width} values, but model {served.card.name!r} expects "
                                 f"{served.card.input_size} features per row", "inputs")
        plan = make_plan(request, model=served.card.name, max_samples=self.limits.max_samples)
        ood = plan.mode is Mode.MC and served.calibration is not None and served.calibration.density is not None
        plan = replace(plan, cost=len(plan) * (plan.passes + ood) * served.cost)
        budget = self.limits.max_cost
        if budget is not None and plan.cost is not None and plan.cost > budget:
            passes = "max_samples" if plan.adaptive else "n_samples"
            raise TooLarge(f"this request needs {plan.cost:.3g} multiply-adds (rows x {passes} x {served.cost:.3g} for "
                           f"model {served.card.name!r}), beyond this server's budget of {budget:.3g} (MCDROP_MAX_COST): "
                           f"send fewer rows or fewer passes", passes if plan.mode is Mode.MC else "inputs")
        return plan

    def check(self, request: PredictRequest | Plan) -> Served:
        """Check a valid request against its model and this server's limits; raise a :class:`PredictError`."""
        return self.served(self.plan(request).model)

    def cost(self, request: PredictRequest | Plan) -> float:
        """The request's work in multiply-adds: rows x passes (the cap when adaptive, +1 for OOD) x the model's."""
        cost = self.plan(request).cost
        assert cost is not None
        return cost

    def check_options(self, options: RequestOptions) -> Served:
        """Check what a request asks for besides its inputs against the model and the server's limits."""
        served = self.served(options.model)
        if options.mode is Mode.MC:
            cap = self.limits.max_samples
            if options.n_samples > cap:
                raise InvalidRequest(f"n_samples is {options.n_samples}, but this server allows at most {cap}", "n_samples")
            if options.max_samples is not None and options.max_samples > cap:
                raise InvalidRequest(f"max_samples is {options.max_samples}, but this server allows at most {cap}",
                                     "max_samples")
        if options.stop == "class" and served.card.task is not Task.CLASSIFICATION:
            raise InvalidRequest(f"stop='class' settles a classifier's class, but model {served.card.name!r} is a "
                                 f"{served.card.task.value} model (use stop='decision')", "stop")
        calibration = served.calibration
        asks = {"coverage": options.coverage, "selective_risk": options.selective_risk,
                "selective_coverage": options.selective_coverage}
        for name, value in asks.items():
            if value is not None and (calibration is None or not calibration.supports(name, options.mode)):
                raise InvalidRequest(f"{name}: model {served.card.name!r} has no calibration for it in "
                                     f"{options.mode.value} mode (see its card's calibration section)", name)
        if options.coverage is not None and calibration and not calibration.supports("coverage", options.mode,
                                                                                       options.set_method):
            raise InvalidRequest(f"set_method: model {served.card.name!r} has no {options.set_method!r} conformal scores "
                                 f"(it was calibrated before that method existed); recalibrate it or choose "
                                 f"{'aps_randomized' if options.set_method in ('aps', 'raps') else 'aps'}", "set_method")
        return served

    def work(self, request: PredictRequest | Plan) -> float:
        """The request's cost in multiply-adds of the slowest served model (:attr:`rate`): :meth:`cost` scaled by
        how much faster its own model ran at start-up (the fused MLP kernel does a dense multiply-add's work in
        a fraction of the time a convolution does), so one rate times the queued work of every model."""
        plan = self.plan(request)
        rate, served = self.rate, self.served(plan.model)
        return self.cost(plan) * (rate / served.rate if served.rate > 0 else 1.0)

    # ------------------------------------------------------------------ prediction

    def predict(self, request: PredictRequest | Plan, *, cancelled: Callable[[], bool] | None = None) -> PredictResult:
        """Answer one request (raises a :class:`PredictError`)."""
        answer = self.predict_many([request], cancelled=cancelled)[0]
        if isinstance(answer, PredictError):
            raise answer
        return answer

    def predict_many(self, requests: Sequence[PredictRequest | Plan], *, cancelled: Callable[[], bool] | None = None
                     ) -> list[PredictResult | PredictError]:
        """Answer several requests, merging compatible ones into one engine call; invalid ones get their error.
        Plans run as they are; a request is planned here first (:meth:`plan`)."""
        answers: list[PredictResult | PredictError | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[Plan]] = {}
        where: dict[tuple[Any, ...], list[int]] = {}
        for i, req in enumerate(requests):
            try:
                plan = self.plan(req)
            except PredictError as err:
                answers[i] = err
                continue
            r = plan.request
            key = (plan.model, r.mode, r.n_samples if r.mode is Mode.MC else 0, r.level, r.return_samples,
                   i if plan.adaptive else -1)
            groups.setdefault(key, []).append(plan)
            where.setdefault(key, []).append(i)
        for key, group in groups.items():
            try:
                responses: Sequence[PredictResult | PredictError] = self._run(group, cancelled)
            except SamplingCancelled as err:
                responses = [Cancelled(str(err))] * len(group)
            for i, response in zip(where[key], responses, strict=True):
                answers[i] = response
        return answers  # type: ignore[return-value]

    def predict_array(self, x: Any, *, model: str | None = None, **options: Any) -> PredictResult:
        """Score an array ``(B, D)`` with the request options (``mode``, ``n_samples``, ``seed``, ...)."""
        try:
            request = PredictRequest.model_validate({"inputs": np.asarray(x), "model": model, **options}, strict=False)
        except ValidationError as err:
            raise request_error(err) from err
        return self.predict(request)

    def _run(self, group: list[Plan], cancelled: Callable[[], bool] | None) -> list[PredictResult | PredictError]:
        served = self.served(group[0].model)
        first = group[0].request
        sizes = [len(plan) for plan in group]
        inputs = np.concatenate([plan.inputs for plan in group]) if len(group) > 1 else first.inputs
        x = torch.from_numpy(np.require(inputs, np.float32, ["C", "W"])).to(self.device)  # .npy bodies are read-only
        rows = torch.cat([torch.arange(p.request.row_offset, p.request.row_offset + n)
                          for p, n in zip(group, sizes, strict=True)])
        seed: int | Tensor | None = None
        if first.mode is Mode.MC:
            seeds = [plan.seed for plan in group if plan.seed is not None]
            if len(seeds) < len(group):
                raise ValueError("an MC plan without a seed: plans are made by mcdrop.plan.make_plan, which draws one")
            seed = seeds[0] if len(group) == 1 else torch.cat(
                [torch.full((n,), s, dtype=torch.int64) for s, n in zip(seeds, sizes, strict=True)])
        result = predict(
            served.engine, x, task=served.card.task, tau=served.card.tau, mode=first.mode, n_samples=first.n_samples,
            seed=seed, rows=rows, tolerance=first.tolerance, max_samples=group[0].max_samples,
            level=first.level, return_samples=first.return_samples,
            features=served.calibration.feature_layers if served.calibration else (), cancelled=cancelled,
            **(stopping_options(first, served.calibration, seed, rows) if seed is not None else {}))
        calibration, summary = served.calibration, result.summary
        ood = calibration.density.score(result.features).double() \
            if calibration is not None and calibration.density is not None and result.features else None
        finite = _finite_rows(summary)
        columns = _columns(result.summary)
        samples = result.samples.numpy() if result.samples is not None else None
        answers: list[PredictResult | PredictError] = []
        start = 0
        for plan, n in zip(group, sizes, strict=True):
            req = plan.request
            part = slice(start, start + n)
            start += n
            if not bool(finite[part].all()):
                bad = int(torch.nonzero(~finite[part])[0])
                answers.append(OutputOverflow(
                    f"inputs[{bad}] (row {req.row_offset + bad}): the model's output overflowed to NaN or infinity; the "
                    "input lies far outside the range the model was trained on", "inputs"))
                continue
            decided = None if calibration is None else decisions(
                calibration, plan, ood=None if ood is None else ood[part], **_decision_inputs(summary, part))
            answers.append(PredictResult(
                model=served.card.name, model_version=served.card.version, task=served.card.task, mode=req.mode,
                seed=plan.seed if needs_seed(req) else None,
                columns={**{k: v[part] for k, v in columns.items()}, **(decided.columns if decided else {})},
                samples=samples[:, part] if req.return_samples and samples is not None else None,
                notes=_notes(req, served.card, decided.notes if decided else []), class_names=served.card.class_names))
        return answers


def _notes(request: PredictRequest, card: ModelCard, notes: list[str]) -> list[str]:
    """The calibration's notes, and one when the inputs look like 0-255 pixels for a model expecting [0, 1]."""
    pixels = range_note(request.inputs, card)
    return [*notes, pixels] if pixels else notes


def _decision_inputs(summary: ClassificationSummary | RegressionSummary, part: slice) -> dict[str, Tensor]:
    """The arrays the decisions read: a classifier's mean probabilities and confidence, a regressor's mean and std."""
    if isinstance(summary, ClassificationSummary):
        return {"probabilities": summary.probabilities[part], "confidence": summary.confidence[part]}
    return {"mean": summary.mean[part], "std": summary.std[part]}


def _finite_rows(summary: ClassificationSummary | RegressionSummary) -> Tensor:
    """``(B,)``: whether each row's prediction is finite (an input far out of range can overflow float32)."""
    if isinstance(summary, ClassificationSummary):
        return torch.isfinite(summary.probabilities).all(1)
    return torch.isfinite(summary.mean) & torch.isfinite(summary.variance)


def _columns(summary: ClassificationSummary | RegressionSummary) -> dict[str, np.ndarray]:
    """A summary's fields as result columns (:func:`mcdrop.result.summary_fields`; those None in this mode are
    left out); the interval's ``level``, one number, repeated per row last."""
    task = Task.CLASSIFICATION if isinstance(summary, ClassificationSummary) else Task.HOMOSCEDASTIC
    out = {}
    for name in summary_fields(task):
        value: Tensor | float | None = getattr(summary, name)
        if isinstance(value, Tensor):
            out[name] = value.numpy() if value.dtype == torch.int64 else value.double().numpy()
    if isinstance(summary, RegressionSummary):
        out["level"] = np.full(len(out["mean"]), summary.level)
    return out
