"""The BentoML service: one class holding the predictor and its scheduler, with ``POST /predict`` and ``POST /acquire``
as ``@bentoml.api`` methods typed by the schemas (so BentoML's ``SyncHTTPClient``/``AsyncHTTPClient``, its service
schema and ``bentoml.depends`` know them); ``GET /models``, ``/openapi.json`` and ``/docs`` come from the app
mounted behind them (:mod:`mcdrop.service.app`; BentoML's API methods are ``POST`` only).

Over HTTP the methods answer with mcdrop's own door (:func:`~mcdrop.service.app.answer_predict`): BentoML's input
spec reads nothing (:class:`_Unread`), so the body is read once, as JSON (strict, repeated keys refused) or
``.npy`` with query options, the answer is pre-serialised JSON or ``.npy`` (``Accept: application/x-npy``), and
every error keeps the service's shape ``{"error", "field", ...}`` and status; BentoML's own validation would
answer its own shape.  Called in-process (``bentoml.depends`` in the same process), a method validates its keyword
arguments with the schema and returns the typed response, raising :class:`~mcdrop.serving.errors.PredictError`.

Settings come from the environment when the service starts (:class:`~mcdrop.serving.config.ServiceConfig`,
listed in README and ``/openapi.json``), never at import, so a test process can build it with other
settings.  By default the service binds 127.0.0.1 (``bentoml serve``, ``mcdrop serve`` and a built Bento
alike); ``--host 0.0.0.0`` (or ``BENTOML_HOST``) exposes it, together with ``MCDROP_ALLOWED_HOSTS`` for the
names clients will use.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
from typing import Any, cast

import bentoml
from pydantic import ConfigDict

from mcdrop.request import Mode
from mcdrop.schemas import AcquireRequest, AcquireResponse, PredictRequest, PredictResponse, PredictResult
from mcdrop.service import patches, protocol
from mcdrop.service.app import answer_predict, create_app, submit
from mcdrop.service.guard import Guard
from mcdrop.serving import drift
from mcdrop.serving.config import DEFAULT_SLICE_COST, SLICE_SECONDS, ServiceConfig, workers_from_env
from mcdrop.serving.predictor import Predictor
from mcdrop.serving.scheduler import Scheduler

__all__ = ["MCDrop", "Metrics"]

patches.install()  # before BentoML's worker builds its uvicorn.Config (it imports this module first)

BACKSTOP_TIMEOUT_S = 900
"""BentoML's own request timeout, behind MCDROP_REQUEST_TIMEOUT (which answers first, with mcdrop's 504)."""


class Metrics:
    """The service's Prometheus metrics (on ``/metrics``, beside BentoML's request metrics).  Prometheus keeps
    metrics in a process-wide registry, so the process makes them once (:func:`metrics`)."""

    def __init__(self) -> None:
        import prometheus_client as m

        self.samples = m.Counter(name="mcdrop_mc_samples_total", documentation="Monte Carlo forward passes drawn, "
                                 "summed over rows", labelnames=["model"])
        self.latency = m.Histogram(name="mcdrop_prediction_latency_seconds", documentation="Time from request to answer "
                                   "of /predict, by mode", labelnames=["mode"],
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.mutual_information = m.Histogram(
            name="mcdrop_mutual_information", documentation="Mutual information (epistemic uncertainty, nats) of each "
            "served MC classification", labelnames=["model"],
            buckets=(0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.5))
        self.ood = m.Histogram(name="mcdrop_ood_score", documentation="OOD score of each served input (about 0 for "
                               "typical inputs)", labelnames=["model"],
                               buckets=(-2, -1, 0, 1, 2, 3, 4, 6, 8, 12, 20, 50, 100))
        self.abstentions = m.Counter(name="mcdrop_abstentions_total", documentation="Answers withheld, by reason",
                                     labelnames=["model", "reason"])
        self.answers = m.Counter(name="mcdrop_answers_total", documentation="Rows answered", labelnames=["model"])
        self.errors = m.Counter(name="mcdrop_errors_total", documentation="Requests refused or failed after they "
                                "were read", labelnames=["model"])

    def observe(self, request: PredictRequest, result: PredictResult | None, seconds: float) -> None:
        model = request.model or "default"
        self.latency.labels(mode=request.mode.value).observe(seconds)
        if result is None:
            self.errors.labels(model=model).inc()
            return
        model = result.model
        self.answers.labels(model=model).inc(len(result))
        if result.mode is Mode.MC:
            self.samples.labels(model=model).inc(float(result.n_samples.sum()))
        for value in result.columns.get("mutual_information", ()):
            self.mutual_information.labels(model=model).observe(float(value))
        for value in result.columns.get("ood_score", ()):
            self.ood.labels(model=model).observe(float(value))
        for reason in ("out_of_distribution", "uncertain"):
            flags = result.columns.get(f"abstain_{reason}")
            if flags is not None and flags.any():
                self.abstentions.labels(model=model, reason=reason).inc(int(flags.sum()))


@functools.cache
def metrics() -> Metrics:
    """The process's metrics (created on first use: a second service instance in a test process shares them)."""
    return Metrics()


class _Guard(Guard):
    """The guard with the settings of this process's environment (built in the worker at start-up)."""

    def __init__(self, app: Any) -> None:
        config = ServiceConfig.from_env()
        super().__init__(app, allowed_hosts=config.allowed_hosts, allowed_origins=config.allowed_origins,
                         api_key=config.api_key, max_body_bytes=config.limits.max_body_bytes, docs=config.docs,
                         body_timeout_s=config.body_timeout_s, body_deadline_s=config.body_deadline_s,
                         body_paths=("/predict", "/acquire"))  # size, pace and type of every body read


_UNREAD = object()
"""The value of every field BentoML passes to an API method called over HTTP: the method reads the body itself."""


class _Unread(bentoml.IODescriptor):
    """An input spec that BentoML describes by the schema (its service schema and clients) but that reads no body."""

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> Any:
        return _placeholder(cls)


_PLACEHOLDERS: dict[type[_Unread], _Unread] = {}


def _placeholder(spec: type[_Unread]) -> _Unread:
    """The input BentoML hands on for every request (it reads the fields with getattr): every field :data:`_UNREAD`
    (made once per spec)."""
    placeholder = _PLACEHOLDERS.get(spec)
    if placeholder is None:
        placeholder = _PLACEHOLDERS[spec] = spec.model_construct(**dict.fromkeys(spec.model_fields, _UNREAD))
    return placeholder


def _unions_kept(node: Any) -> Any:
    """The JSON schema with each ``anyOf`` wrapped once in another (an equivalent schema): BentoML's service schema
    keeps only the first alternative of a union (``_flatten_field``), and its HTTP client then decodes a null where
    that says array, or drops a regression row's fields where it says classification; wrapped, the union survives
    and the client passes the value through as it came."""
    if isinstance(node, dict):
        node = {k: _unions_kept(v) for k, v in node.items()}
        if "anyOf" in node:
            node["anyOf"] = [{"anyOf": node["anyOf"]}]
        return node
    if isinstance(node, list):
        return [_unions_kept(v) for v in node]
    return node


class _Output(bentoml.IODescriptor):
    """An output spec whose unions BentoML's clients read as they are (:func:`_unions_kept`)."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _unions_kept(super().model_json_schema(*args, **kwargs))


class PredictOutput(_Output, PredictResponse):
    __doc__ = PredictResponse.__doc__  # ``POST /predict``'s BentoML output spec, named and described as PredictResponse
    model_config = ConfigDict(title="PredictResponse")


class AcquireOutput(_Output, AcquireResponse):
    __doc__ = AcquireResponse.__doc__  # ``POST /acquire``'s BentoML output spec, named and described as AcquireResponse
    model_config = ConfigDict(title="AcquireResponse")


class PredictInput(_Unread, PredictRequest):
    __doc__ = PredictRequest.__doc__  # ``POST /predict``'s BentoML input spec, named and described as PredictRequest
    model_config = ConfigDict(title="PredictRequest")


class AcquireInput(_Unread, AcquireRequest):
    __doc__ = AcquireRequest.__doc__  # ``POST /acquire``'s BentoML input spec, named and described as AcquireRequest
    model_config = ConfigDict(title="AcquireRequest")


def _over_http(fields: dict[str, Any], ctx: Any) -> bool:
    return ctx is not None and next(iter(fields.values()), None) is _UNREAD


def _answer(ctx: Any, response: Any) -> Any:
    ctx.response.status_code = response.status_code  # BentoML sets the answer's status from the context's
    return response


@bentoml.service(name="mcdrop", workers=workers_from_env(strict=False), http={"host": "127.0.0.1", "port": 3000},
                 traffic={"timeout": BACKSTOP_TIMEOUT_S})
class MCDrop:
    """Monte Carlo dropout predictions with uncertainty."""

    def __init__(self) -> None:
        import torch

        from mcdrop.sampling.runtime import tune_allocator

        self.config = ServiceConfig.from_env()
        protocol.HeaderDeadlineProtocol.timeout_s = self.config.header_timeout_s
        tune_allocator()
        if threads := self.config.worker_threads():
            torch.set_num_threads(threads)
        limits = self.config.limits
        self.predictor = Predictor(self.config.models or None, limits=limits, device=self.config.device,
                                   precision=self.config.precision)
        slice_cost = self.config.slice_cost or max(DEFAULT_SLICE_COST, SLICE_SECONDS * self.predictor.rate)
        self.scheduler = Scheduler(self.predictor, slice_cost=slice_cost, max_rows=limits.max_rows,
                                   batch_wait_ms=self.config.batch_wait_ms, timeout_s=limits.timeout_s or 60.0,
                                   rate=self.predictor.rate)
        self.metrics = metrics()
        self.drift = drift.drift_metrics()  # per-model drift statistics on /metrics (README, "Monitoring")
        self.drift.watch(drift.monitors_for(self.predictor))
        # Long-lived start-up objects (torch, models) leave the collector's view: full collections under load
        # then scan only per-request garbage (fewer multi-millisecond pauses in the tail).
        gc.collect()
        gc.freeze()
        if url := os.environ.get("MCDROP_ANNOUNCE_URL"):  # started by `mcdrop serve`: say so only now it can answer
            print(f"mcdrop: serving on {url} (POST /predict, GET /models, /openapi.json, /readyz, /metrics)",
                  file=sys.stderr, flush=True)

    @bentoml.on_deployment
    def check() -> None:
        """Before any worker starts (in BentoML's main process): check the settings and load every model once;
        a bad one stops the server with one line naming the variable or file, instead of workers restarting."""
        import sys

        from mcdrop.nets.artifacts import ArtifactError, load_artifact
        from mcdrop.sampling import kernels
        from mcdrop.sampling.precision import check_precision
        from mcdrop.sampling.runtime import resolve_device
        from mcdrop.serving.config import SettingError

        kernels.load()  # build the fused MC kernel into the cache once, before the workers open it

        try:  # relative paths in the settings are relative to the service's folder (a Bento's src/), as in workers
            with contextlib.chdir(cast(Any, MCDrop).working_dir):
                config = ServiceConfig.from_env()
                for ref in config.models or [None]:
                    load_artifact(ref)
                try:
                    device = resolve_device(config.device)
                except ValueError as err:
                    raise SettingError("MCDROP_DEVICE", str(err)) from None
                try:
                    check_precision(config.precision, device)
                except ValueError as err:
                    raise SettingError("MCDROP_PRECISION", str(err)) from None
        except (SettingError, ArtifactError) as err:
            print(f"mcdrop: cannot serve: {err}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    @bentoml.on_shutdown
    def close(self) -> None:
        """When the server stops: cancel the queued work and stop the scheduler's worker thread."""
        self.scheduler.close()

    def __is_ready__(self) -> bool:
        """Not ready while the queued work would not finish within a request's timeout (overload)."""
        return not self.scheduler.overloaded()

    @bentoml.api(route="/predict", input_spec=PredictInput, output_spec=PredictOutput)
    async def predict(self, ctx: bentoml.Context = None, **request: Any) -> PredictResponse:  # type: ignore[assignment]
        """Predictions with uncertainty for a batch of inputs (a JSON body, or an .npy body with the other fields as
        query parameters; the answer as JSON, or .npy with Accept: application/x-npy)."""
        if _over_http(request, ctx):
            return _answer(ctx, await answer_predict(self, ctx.request))
        return (await submit(self, PredictRequest.model_validate(request))).response()

    @bentoml.api(route="/acquire", input_spec=AcquireInput, output_spec=AcquireOutput)
    async def acquire(self, ctx: bentoml.Context = None, **request: Any) -> AcquireResponse:  # type: ignore[assignment]
        """The k rows of an unlabelled pool to label next (active learning)."""
        import anyio

        from mcdrop.service.acquire_route import answer_acquire
        from mcdrop.serving import acquisition

        if _over_http(request, ctx):
            return _answer(ctx, await answer_acquire(self, ctx.request))
        return await anyio.to_thread.run_sync(acquisition.acquire, self.predictor, AcquireRequest.model_validate(request))

    def observe(self, request: PredictRequest, result: PredictResult | None, seconds: float) -> None:
        self.metrics.observe(request, result, seconds)
        if result is not None:
            self.drift.observe(result.model, result.columns.get("ood_score"))


_service = cast(Any, MCDrop)  # a bentoml.Service at run time (the decorator's result), a class to a type checker
_service.mount_asgi_app(create_app(bentoml.get_current_service), path="/")
_service.add_asgi_middleware(_Guard)
