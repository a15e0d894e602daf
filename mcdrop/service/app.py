"""The HTTP routes: request body -> schema -> scheduler -> response body.  HTTP statuses live here.

``POST /predict`` reads JSON (validated strictly by :class:`~mcdrop.schemas.PredictRequest`) or an ``.npy``
array with the other fields as query parameters (:mod:`mcdrop.wire`); it answers JSON, or a structured ``.npy``
(one record per row) when the request's ``Accept`` asks for ``application/x-npy``.  ``GET /models`` lists the served cards and the
limits; ``GET /openapi.json`` describes all of it; ``GET /docs`` shows that description (when enabled).
Every error is JSON ``{"error", "field", ...}``, a validation error carries at most five details and a count.

In the service, ``POST /predict`` and ``POST /acquire`` are BentoML API methods that answer with
:func:`answer_predict` and :func:`~mcdrop.service.acquire_route.answer_acquire`; :func:`create_app` (mounted behind
them) routes the same functions, so the in-process test tier exercises the code the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mcdrop.sampling.runtime import release_free_memory
from mcdrop.schemas import ErrorResponse, ModelsResponse, PredictRequest, PredictResult
from mcdrop.service.json_keys import duplicate_key
from mcdrop.service.openapi import openapi_document
from mcdrop.serving.config import ServiceConfig
from mcdrop.serving.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    OutputOverflow,
    Overloaded,
    PredictError,
    TooLarge,
    UnknownModel,
)
from mcdrop.serving.predictor import Predictor, request_error
from mcdrop.serving.scheduler import Scheduler
from mcdrop.wire import META_HEADER, NPY, WireError, decode_npy, encode_result

__all__ = ["STATUS", "State", "answer_predict", "create_app", "submit"]

STATUS: dict[type[PredictError], int] = {
    InvalidRequest: 400, UnknownModel: 404, TooLarge: 413, OutputOverflow: 422, Cancelled: 499, Overloaded: 503,
    DeadlineExceeded: 504,
}
"""The HTTP status of each :class:`~mcdrop.serving.errors.PredictError`."""
MAX_DETAILS = 5


class State(Protocol):
    """What the routes need from the running service."""

    config: ServiceConfig
    predictor: Predictor
    scheduler: Scheduler

    def observe(self, request: PredictRequest, result: PredictResult | None, seconds: float) -> None: ...


def error_response(message: str, field: str | None, status: int, detail: list[dict[str, Any]] | None = None,
                   count: int | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=message, field=field, detail=detail, error_count=count)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _validation_response(err: ValidationError) -> JSONResponse:
    """A schema violation: the first error as the message, the first few as detail (no input values echoed)."""
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    first = request_error(err)
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:300], "type": e.get("type")}
              for e in errors[:MAX_DETAILS]]
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return error_response(f"{first}{more}"[:1000], first.field or "body", 400, detail, len(errors))


def _query_options(request: Request) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in options:
            raise InvalidRequest(f"query parameter {key[:50]!r} is given twice", key[:50])
        options[key] = value.lower() in ("1", "true") if key == "return_samples" else value
    return options


THREAD_PARSE_BYTES = 256 * 1024
"""Bodies larger than this are parsed and validated in a worker thread: a 16 MB body takes about half a second,
which would otherwise stall every other connection (and /livez) on the event loop."""
T = TypeVar("T")
_PARSER = ThreadPoolExecutor(1, thread_name_prefix="mcdrop-parse")
"""The one thread that parses large bodies.  glibc gives each thread that allocates its own heap (arena), and
a thread's freed memory stays in its arena: spread over a pool's threads, every 16 MB body left its worker about
80 MB larger, without bound (issue 21); in one thread each parse reuses the last one's memory."""


async def _parse(request: Request) -> PredictRequest:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    options = _query_options(request) if media == NPY else None
    if media != NPY and request.query_params:
        raise InvalidRequest("query parameters apply to application/x-npy bodies; put the fields in the JSON body",
                             next(iter(request.query_params))[:50])
    if len(body) > THREAD_PARSE_BYTES:
        return await asyncio.get_running_loop().run_in_executor(_PARSER, _decode_large, body, options)
    return _decode(body, options)


async def parse_in_one_thread(parse: Callable[[bytes], T], body: bytes) -> T:
    """``parse(body)`` on the one parsing thread (:data:`_PARSER`), its transient memory then returned to the OS (as
    :func:`_decode_large`): for routes other than ``/predict`` that read large JSON bodies."""

    def run() -> T:
        try:
            return parse(body)
        finally:
            release_free_memory()

    return await asyncio.get_running_loop().run_in_executor(_PARSER, run)


def _decode_large(body: bytes, options: dict[str, Any] | None) -> PredictRequest:
    """:func:`_decode`, then the free memory its transient Python objects leave (a 16 MB body of JSON makes
    hundreds of MB of them) goes back to the OS, which the service's allocator settings (``tune_allocator``:
    freed memory stays for the engine) would not do."""
    try:
        return _decode(body, options)
    finally:
        release_free_memory()


def _decode(body: bytes, options: dict[str, Any] | None) -> PredictRequest:
    """The request from a .npy body and its query options (``options`` not None), or from a JSON body."""
    if options is not None:
        return PredictRequest.model_validate({"inputs": decode_npy(body), **options}, strict=False)
    if not body.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object with inputs", "body")
    request = PredictRequest.model_validate_json(body)  # the last of repeated keys wins here: refuse repeats
    if (key := duplicate_key(body)) is not None:
        raise InvalidRequest(f"the JSON body gives {key[:50]!r} more than once; give each field once", key[:50])
    return request


async def _until_disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def submit(svc: State, request: PredictRequest) -> Awaitable[PredictResult]:
    """The service's one call into the scheduler, which plans the request at once (:meth:`Predictor.plan`:
    checked against the model and the limits, its seed drawn) and queues the plan."""
    return svc.scheduler.submit(request)


async def answer_predict(svc: State, request: Request) -> Response:
    """``POST /predict``: the body (JSON or ``.npy``) -> schema -> scheduler -> JSON or ``.npy``, every error in the
    service's shape.  The BentoML API method :meth:`mcdrop.service.service.MCDrop.predict` and :func:`create_app`
    both answer with it."""
    start = time.perf_counter()
    try:
        parsed = await _parse(request)
    except ValidationError as err:
        return _validation_response(err)
    except WireError as err:
        return error_response(str(err), "body", 400)
    except ValueError as err:  # malformed JSON reaches pydantic as a ValidationError; this is the rest
        return error_response(f"the request body cannot be read: {err}"[:500], "body", 400)
    except PredictError as err:
        return error_response(str(err), err.field, STATUS[type(err)])
    work = asyncio.ensure_future(submit(svc, parsed))
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():  # the client went away: stop its work
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, PredictError):
            await work
        svc.observe(parsed, None, time.perf_counter() - start)
        return Response(status_code=499)
    try:
        result = work.result()
    except PredictError as err:
        svc.observe(parsed, None, time.perf_counter() - start)
        headers = {"retry-after": "5"} if isinstance(err, Overloaded) else None
        return error_response(str(err), err.field, STATUS[type(err)], headers=headers)
    svc.observe(parsed, result, time.perf_counter() - start)
    if NPY in request.headers.get("accept", ""):
        body, meta = encode_result(result)
        return Response(body, media_type=NPY, headers={META_HEADER: meta})
    return Response(result.response().model_dump_json(), media_type="application/json")


def create_app(state: Callable[[], State]) -> Starlette:
    """The routes, reading the running service through ``state()`` (no module-level state).  In the service,
    BentoML's own routes for its API methods (``POST /predict``, ``POST /acquire``) come first; this app, mounted
    behind them, answers ``GET /models``, ``/openapi.json``, ``/docs``, the 404s and 405s, and is the whole API
    of the in-process test tier."""

    async def predict(request: Request) -> Response:
        return await answer_predict(state(), request)

    async def models(_request: Request) -> Response:
        svc = state()
        body = ModelsResponse(default=svc.predictor.default, limits=svc.predictor.limits, models=svc.predictor.cards)
        return Response(body.model_dump_json(), media_type="application/json")

    async def openapi(_request: Request) -> JSONResponse:
        return JSONResponse(openapi_document())

    async def docs(_request: Request) -> Response:
        if not state().config.docs:
            return error_response("the OpenAPI page is off (MCDROP_DOCS=1 turns it on); the API is described at "
                                  "/openapi.json", None, 404)
        return HTMLResponse(_DOCS_PAGE)

    async def not_found(request: Request, _exc: Exception) -> JSONResponse:
        return error_response(f"no route {request.url.path[:100]!r}: POST /predict, GET /models, /openapi.json, "
                              "/livez, /readyz, /metrics", None, 404)

    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
        return error_response(f"{request.method} is not allowed on {request.url.path[:100]}; allowed: {allow}", None, 405,
                              headers={"allow": allow})

    routes = [Route("/predict", predict, methods=["POST"]), Route("/models", models, methods=["GET"]),
              Route("/openapi.json", openapi, methods=["GET"]), Route("/docs", docs, methods=["GET"])]
    from mcdrop.service.acquire_route import answer_acquire  # here: that module imports this one

    async def acquire(request: Request) -> Response:
        return await answer_acquire(state(), request)

    routes.append(Route("/acquire", acquire, methods=["POST"]))
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


# The page loads Swagger UI from BentoML's own static files on this server: nothing from third parties (and no
# validator badge: Swagger UI's default validatorUrl sends the document to validator.swagger.io).
_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>mcdrop API</title>
<link rel="stylesheet" href="/static_content/swagger-ui.css"></head>
<body><div id="swagger-ui"></div><script src="/static_content/swagger-ui-bundle.js"></script>
<script>window.onload = () => {
  window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null}); };</script>
</body></html>
"""
