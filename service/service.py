"""The BentoML service: request schema -> Predictor (micro-batched) -> response schema.  No model math here.

Configuration (environment variables, read at start-up):
  MCDROP_SERVE_MODELS    comma-separated model names in models/ or paths; the first is the default
                         (default: the bundled fashion-mnist classifier)
  MCDROP_MAX_ROWS        rows per request (default 1024)
  MCDROP_MAX_SAMPLES     MC passes per request, also the adaptive cap (default 2000)
  MCDROP_MAX_BODY_BYTES  request body size (default 16 MiB)
  MCDROP_BATCH_WAIT_MS   how long an idle batcher waits for company (default 2)
  MCDROP_THREADS         torch threads (default: torch's choice)
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcdrop.artifacts import MODELS_DIR
from mcdrop.batching import MicroBatcher, QueueFullError
from mcdrop.predictor import Predictor, RequestError, limits_from_env
from mcdrop.schemas import FLOAT32_MAX, ErrorResponse, ModelsResponse, PredictRequest, PredictResponse

LIMITS = limits_from_env()
SERVED = [m.strip() for m in os.environ.get("MCDROP_SERVE_MODELS", "").split(",") if m.strip()] or None

SAMPLES_DRAWN = bentoml.metrics.Counter(
    name="mcdrop_mc_samples_total", documentation="Monte Carlo forward passes drawn, summed over rows",
    labelnames=["model"])
LATENCY = bentoml.metrics.Histogram(
    name="mcdrop_prediction_latency_seconds", documentation="Time from request to answer of /predict, by mode",
    labelnames=["mode"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
_state: dict[str, Predictor] = {}


def error(message: str, field: str | None, status: int) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=message, field=field).model_dump(), status_code=status)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before they are parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        too_big = error(f"the request body is larger than this server's limit of {self.max_bytes} bytes "
                        "(MCDROP_MAX_BODY_BYTES); split the batch", "body", 413)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await too_big(scope, receive, send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise RequestError("request body too large", "body", 413)
            return message

        return await self.app(scope, counted, send)


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class ErrorShape:
    """Give BentoML's own validation errors on /predict (400 ``{"error": "1 validation error for ...",
    "detail": [pydantic errors]}``) the service's shape: ``error`` says where and what, ``field`` names the
    request field (``body`` for malformed JSON); ``detail`` stays.  Form bodies get 415 (field ``content-type``):
    the API takes JSON only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/predict":
            return await self.app(scope, receive, send)
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1")
        media = content_type.split(";")[0].strip().lower()
        if media in FORM_TYPES:  # BentoML would parse a form (and answer 500 on a malformed one)
            message = f"/predict takes a JSON body (Content-Type: application/json), but got Content-Type {media}"
            return await error(message, "content-type", 415)(scope, receive, send)
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def reshape(message: Any) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = _with_field(b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        return await self.app(scope, receive, reshape)


def _with_field(raw: bytes) -> bytes:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(body, dict) or body.get("field") is not None:
        return raw
    detail = body.get("detail")
    if not isinstance(detail, list) or not detail:
        return raw
    loc = [str(part) for part in detail[0].get("loc", [])]
    where = (loc[0] + "".join(f"[{p}]" for p in loc[1:])) if loc else "body"
    more = f" (and {len(detail) - 1} more, see detail)" if len(detail) > 1 else ""
    shaped = ErrorResponse(error=f"{where}: {_message(detail[0])}{more}", field=loc[0] if loc else "body",
                           detail=detail)
    return shaped.model_dump_json().encode()


def _message(err: dict[str, Any]) -> str:
    """Pydantic's message, with the float32 bound on inputs written readably (not as 39 digits)."""
    msg = str(err.get("msg", "invalid"))
    head, _, number = msg.rpartition(" ")
    try:
        if abs(float(number)) == FLOAT32_MAX:
            return f"{head} {float(number):.8g} (inputs have to fit in float32)"
    except ValueError:
        pass
    return msg


async def list_models(_request: Request) -> JSONResponse:
    predictor = _state.get("predictor")
    if predictor is None:
        return error("the service is starting", None, 503)
    body = ModelsResponse(default=predictor.default, limits=predictor.limits, models=predictor.cards)
    return JSONResponse(body.model_dump(mode="json"))


models_app = Starlette(routes=[Route("/models", list_models, methods=["GET"])])


@bentoml.service(name="mcdrop", traffic={"timeout": 120}, workers=1)
class MCDrop:
    """Monte Carlo dropout predictions with uncertainty."""

    def __init__(self) -> None:
        import torch

        from mcdrop.runtime import tune_allocator

        tune_allocator()
        if os.environ.get("MCDROP_THREADS"):
            torch.set_num_threads(int(os.environ["MCDROP_THREADS"]))
        self.predictor = Predictor(SERVED, limits=LIMITS)
        self.batcher: MicroBatcher[PredictRequest, PredictResponse] = MicroBatcher(
            self.predictor.predict_many, rows=lambda r: len(r.inputs), max_rows=LIMITS.max_rows,
            max_wait_ms=float(os.environ.get("MCDROP_BATCH_WAIT_MS", "2")))
        _state["predictor"] = self.predictor
        # Long-lived start-up objects (torch, models) leave the collector's view: full collections under
        # load then scan only per-request garbage (fewer multi-millisecond pauses in the tail).
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/predict", input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, **fields: Any) -> PredictResponse | JSONResponse:
        """Predictions with uncertainty for a batch of inputs (deterministic or Monte Carlo)."""
        request = PredictRequest.model_construct(**fields)
        start = time.perf_counter()
        try:
            response = await self.batcher.submit(request)
        except RequestError as err:
            return error(str(err), err.field, err.status)
        except QueueFullError as err:
            return error(str(err), None, 503)
        LATENCY.labels(mode=request.mode).observe(time.perf_counter() - start)
        if request.mode == "mc":
            SAMPLES_DRAWN.labels(model=response.model).inc(sum(p.n_samples for p in response.predictions))
        return response


MCDrop.mount_asgi_app(models_app, path="/")
MCDrop.add_asgi_middleware(BodyLimit, max_bytes=LIMITS.max_body_bytes)
MCDrop.add_asgi_middleware(ErrorShape)
__all__ = ["MODELS_DIR", "MCDrop"]
