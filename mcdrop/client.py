"""Python client of the mcdrop HTTP service: :class:`Client` (blocking) and :class:`AsyncClient`.

Needs only httpx, pydantic and NumPy (importing it imports neither torch nor BentoML).  Requests are real
:class:`~mcdrop.schemas.PredictRequest` s, validated here before anything is sent; answers are
:class:`~mcdrop.schemas.PredictResult` s: NumPy columns, with typed ``.predictions`` and ``.response()``.

* Inputs: a NumPy array, a torch tensor or a list of lists, shape ``(B, D)`` (images ``(B, h, w)`` are
  flattened).  Arrays and tensors travel in the binary format by default (an ``.npy`` body and a structured
  ``.npy`` answer: :mod:`mcdrop.wire`), lists as JSON; ``wire="json"`` or ``"npy"`` chooses.  JSON writes float32
  inputs with 9 significant digits (exact for float32).
* Large inputs are split into requests of at most the server's ``max_rows`` and ``max_body_bytes`` (read
  once from ``GET /models``), sent with ``row_offset`` and one seed (drawn here if none is given), and put
  back together in order, so the answer equals a single request's.
* ``timeout`` is a deadline for a whole call (``predict``, ``models``): every slice, retry and backoff of it.
  A server that trickles its answer is cut off at the deadline: the async client cancels the request; the
  blocking one shuts the connection's socket from a timer once the answer's headers have come (before them,
  each read waits at most the time left, so a server trickling its *headers* can overrun by one such wait).
* Errors::

      ClientError
      ├── APIError           the server refused the request (4xx; 5xx other than 502/503/504)
      ├── UnavailableError   unreachable, or 502/503/504, after every retry (exponential backoff)
      ├── RequestTimeout     no complete answer within ``timeout`` (not retried: the server may still be busy)
      └── ResponseError      an answer that cannot be read (cut short, or not what the API describes)

  Bad options or inputs raise ``ValueError`` before any request is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import ValidationError

from mcdrop import wire
from mcdrop.errors import MCDropError
from mcdrop.inputs import to_model_range
from mcdrop.plan import Plan, make_plan, with_seed
from mcdrop.schemas import (
    AcquireRequest,
    AcquireResponse,
    Limits,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    PredictResult,
)

__all__ = ["APIError", "AsyncClient", "Client", "ClientError", "RequestTimeout", "ResponseError", "UnavailableError"]

DEFAULT_URL = "http://127.0.0.1:3000"
Wire = Literal["auto", "json", "npy"]
_RETRY_STATUS = frozenset({502, 503, 504})
_RETRY_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ClientError(MCDropError):
    """Base class of the client's errors."""


class APIError(ClientError):
    """The server refused the request (4xx, or 5xx other than 502/503/504).

    Attributes:
        status: HTTP status; field: the request field at fault (e.g. ``"inputs"``, ``"n_samples"``), if
        named; message: the server's explanation; detail: the first validation errors, if any.
    """

    def __init__(self, status: int, message: str, field: str | None = None, detail: Any = None) -> None:
        super().__init__(f"HTTP {status}" + (f" ({field})" if field else "") + f": {message}")
        self.status, self.message, self.field, self.detail = status, message, field, detail


class UnavailableError(ClientError):
    """The server could not be reached, or kept answering 502/503/504, after every retry."""


class RequestTimeout(ClientError):
    """No complete answer within the client's timeout (a deadline for the whole call)."""


class ResponseError(ClientError):
    """The server's answer could not be read: cut short, or not what the API describes."""


def _readable(what: str, read: Any, *args: Any) -> Any:
    """``read(*args)``, with a malformed answer as a :class:`ResponseError` (not pydantic's or NumPy's error)."""
    try:
        return read(*args)
    except (ValidationError, ValueError) as err:  # WireError is a ValueError
        raise ResponseError(f"{what}: the answer cannot be read: {str(err).splitlines()[0][:300]}") from err


def _cut(response: httpx.Response) -> None:
    """Shut the socket under ``response`` (from a timer thread): a read blocked on it returns at once."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _as_array(inputs: Any) -> tuple[Any, bool]:
    """``inputs`` as an array or lists, and whether it came as an array (tensor or ndarray); uint8 pixels are
    divided by 255 (:func:`mcdrop.inputs.to_model_range`, as the server and the CLI do)."""
    if hasattr(inputs, "detach") and hasattr(inputs, "cpu"):  # a torch tensor, read without importing torch
        return to_model_range(inputs.detach().cpu().numpy()), True
    if isinstance(inputs, np.ndarray):
        return to_model_range(inputs), True
    return (list(inputs) if isinstance(inputs, tuple) else inputs), False


def build_request(inputs: Any, options: dict[str, Any]) -> tuple[PredictRequest, bool]:
    """The request for all of ``inputs`` (checked by the shared schema), with a seed drawn if MC needs one."""
    array, is_array = _as_array(inputs)
    fields = {k: v for k, v in options.items() if v is not None}
    try:
        request = PredictRequest.model_validate({"inputs": array, **fields}, strict=False)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        message = str(first.get("msg", "invalid"))
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from err
    return make_plan(request).request, is_array  # the door: one seed for every slice


def acquire_body(inputs: Any, k: int, options: dict[str, Any]) -> bytes:
    """The JSON body of ``POST /acquire`` (checked by the shared schema; a seed drawn if none is given)."""
    array, _ = _as_array(inputs)
    fields = {k_: v for k_, v in options.items() if v is not None}
    try:
        request = with_seed(AcquireRequest.model_validate({"inputs": array, "k": k, **fields}, strict=False))
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        message = str(first.get("msg", "invalid"))
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from err
    return _json_body(request)  # type: ignore[arg-type]


def _json_body(request: PredictRequest) -> bytes:
    """The JSON body, inputs written with 9 significant digits (exact for float32, 40% shorter than repr)."""
    rows = request.inputs
    line = ",".join(["%.9g"] * rows.shape[1])
    inputs = "[[" + "],[".join(line % tuple(r) for r in rows.tolist()) + "]]"
    rest = request.model_dump_json(exclude={"inputs"}, exclude_defaults=True)
    return ('{"inputs":' + inputs + ("," + rest[1:] if rest != "{}" else "}")).encode()


def _query(request: PredictRequest) -> dict[str, str]:
    values = request.model_dump(exclude={"inputs"}, exclude_defaults=True, mode="json")
    return {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in values.items()}


def _error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        return APIError(response.status_code, response.text.strip()[:500] or response.reason_phrase)
    if not isinstance(body, dict):
        return APIError(response.status_code, str(body)[:500])
    return APIError(response.status_code, str(body.get("error") or body)[:1000], body.get("field"), body.get("detail"))


class _Call:
    """One ``predict`` call: its slices, how each is sent, and how an answer is read."""

    def __init__(self, request: PredictRequest, binary: bool, limits: Limits, class_names: list[str] | None) -> None:
        self.request, self.binary, self.class_names = request, binary, class_names
        self.slices = list(self._slices(request, limits))

    def _slices(self, request: PredictRequest, limits: Limits) -> Iterator[PredictRequest]:
        for plan in Plan(request).slices(limits.max_rows):
            part = plan.request
            if len(self.body(part)) > limits.max_body_bytes and len(part.inputs) > 1:  # halve until each part fits
                half = limits.model_copy(update={"max_rows": (len(part.inputs) + 1) // 2})
                yield from self._slices(part, half)
            else:
                yield part

    def body(self, part: PredictRequest) -> bytes:
        return wire.encode_npy(part.inputs) if self.binary else _json_body(part)

    def http_args(self, part: PredictRequest) -> dict[str, Any]:
        if self.binary:
            return {"content": self.body(part), "params": _query(part),
                    "headers": {"content-type": wire.NPY, "accept": f"{wire.NPY}, application/json;q=0.5"}}
        return {"content": self.body(part), "headers": {"content-type": "application/json", "accept": "application/json"}}

    def read(self, response: httpx.Response) -> PredictResult:
        return _readable(f"POST {response.request.url}", self._read, response)

    def _read(self, response: httpx.Response) -> PredictResult:
        if response.headers.get("content-type", "").startswith(wire.NPY):
            return wire.decode_result(response.content, response.headers.get(wire.META_HEADER, "{}"))
        return PredictResult.from_response(PredictResponse.model_validate_json(response.content), self.class_names)


class _Base:
    """What both clients share: configuration, request building, splitting, answers and errors."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 60.0, retries: int = 3, backoff: float = 0.25,
                 max_rows: int | None = None, max_body_bytes: int | None = None, wire: Wire = "auto",
                 api_key: str | None = None, headers: dict[str, str] | None = None) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, but got {retries}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, but got {timeout}")
        if wire not in ("auto", "json", "npy"):
            raise ValueError(f"wire must be 'auto', 'json' or 'npy', but got {wire!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff, self.wire = timeout, retries, backoff, wire
        self._override = {k: v for k, v in {"max_rows": max_rows, "max_body_bytes": max_body_bytes}.items() if v}
        self._models: ModelsResponse | None = None
        self._headers = {"accept": "application/json", **({"authorization": f"Bearer {api_key}"} if api_key else {}),
                         **(headers or {})}

    def _delay(self, attempt: int, deadline: float) -> float:
        return max(0.0, min(self.backoff * 2**attempt, deadline - time.monotonic()))

    def _deadline(self) -> float:
        """When the call that starts now must have its answer (monotonic clock)."""
        return time.monotonic() + self.timeout

    def _left(self, what: str, deadline: float) -> float:
        """Seconds left before ``deadline``; :class:`RequestTimeout` when none are."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(f"{what}: no complete answer within {self.timeout} s")
        return left

    def _call(self, inputs: Any, options: dict[str, Any], models: ModelsResponse | None) -> _Call:
        request, is_array = build_request(inputs, options)
        binary = self.wire == "npy" or (self.wire == "auto" and is_array)
        limits = (models.limits if models else Limits()).model_copy(update=self._override)
        names = None
        if models is not None:
            try:
                names = models.card(request.model).class_names
            except KeyError:
                names = None
        return _Call(request, binary, limits, names)

    def _outcome(self, what: str, attempt: int, response: httpx.Response | None, failure: Exception | None,
                 deadline: float) -> httpx.Response | None:
        """The answer to return, None to retry, or the error to raise for one attempt's outcome."""
        last = attempt == self.retries
        if isinstance(failure, httpx.TimeoutException | TimeoutError) or (failure is not None and
                                                                           time.monotonic() >= deadline):
            raise RequestTimeout(f"{what}: no complete answer within {self.timeout} s") from failure
        if failure is not None:
            if not isinstance(failure, _RETRY_ERRORS):
                raise failure
            if last:
                raise UnavailableError(f"{what}: {failure or type(failure).__name__} (after {attempt + 1} attempts)"
                                       ) from failure
            return None
        assert response is not None
        if response.status_code in _RETRY_STATUS:
            if last:
                raise UnavailableError(f"{what}: HTTP {response.status_code} after {attempt + 1} attempts: "
                                       f"{_error(response).message}")
            return None
        if response.status_code >= 400:
            raise _error(response)
        return response


class Client(_Base):
    """Blocking client.  Use as a context manager, or call :meth:`close`.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:3000``.
        timeout: seconds a whole call may take (all its requests, retries and waits).
        retries: extra attempts after a connection failure or a 502/503/504.
        backoff: first retry delay in seconds (doubling).
        max_rows, max_body_bytes: request limits (default: the server's, from ``GET /models``).
        wire: ``auto`` (arrays binary, lists JSON), ``json`` or ``npy``.
        api_key: the server's bearer token, if it has one.
        transport: an httpx transport (tests, proxies, ``httpx.MockTransport``).
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport,
                                  headers=self._headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, deadline: float, **kwargs: Any) -> httpx.Response:
        what = f"{method} {self.base_url}{path}"
        for attempt in range(self.retries + 1):
            response, failure = None, None
            try:
                response = self._fetch(method, path, self._left(what, deadline), deadline, **kwargs)
            except httpx.HTTPError as err:
                failure = err
            answer = self._outcome(what, attempt, response, failure, deadline)
            if answer is not None:
                return answer
            time.sleep(self._delay(attempt, deadline))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _fetch(self, method: str, path: str, left: float, deadline: float, **kwargs: Any) -> httpx.Response:
        """One request, each read waiting at most ``left`` s, its body cut off at ``deadline`` by a timer."""
        response = self._http.send(self._http.build_request(method, path, timeout=left, **kwargs), stream=True)
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (response,))
        timer.daemon = True
        timer.start()
        try:
            response.read()
        finally:
            timer.cancel()
            response.close()
        return response

    def health(self) -> bool:
        """Whether the service is up and ready (``/readyz`` answers 200); never raises."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def models(self, *, deadline: float | None = None) -> ModelsResponse:
        """The served models' cards, the default model and the limits (``GET /models``, fetched once)."""
        if self._models is None:
            answer = self._send("GET", "/models", deadline or self._deadline())
            self._models = _readable(f"GET {self.base_url}/models", ModelsResponse.model_validate_json, answer.content)
        return self._models

    def limits(self) -> Limits:
        """The server's request limits, with the constructor's overrides."""
        return self.models().limits.model_copy(update=self._override)

    def predict(self, inputs: Any, **options: Any) -> PredictResult:
        """Predictions with uncertainty for every row of ``inputs``.

        Options are the fields of :class:`~mcdrop.schemas.PredictRequest`: ``model``, ``mode``, ``n_samples``,
        ``seed``, ``tolerance``, ``max_samples``, ``level``, ``coverage``, ``set_method``, ``selective_risk``,
        ``selective_coverage``, ``return_samples``, ``row_offset``.
        """
        deadline = self._deadline()
        call = self._call(inputs, options, None if "max_rows" in self._override else self.models(deadline=deadline))
        parts = [call.read(self._send("POST", "/predict", deadline, **call.http_args(part))) for part in call.slices]
        return PredictResult.concat(parts)

    def acquire(self, pool: Any, k: int, *, method: str = "bald", **options: Any) -> AcquireResponse:
        """The ``k`` rows of ``pool`` to label next by ``method`` (bald, batchbald, entropy, margin, random), best
        first (``POST /acquire``, one request: the pool must fit the server's limits).  Options: ``model``,
        ``n_samples``, ``seed``."""
        body = acquire_body(pool, k, {"method": method, **options})
        response = self._send("POST", "/acquire", self._deadline(), content=body,
                              headers={"content-type": "application/json"})
        return _readable(f"POST {self.base_url}/acquire", AcquireResponse.model_validate_json, response.content)


class AsyncClient(_Base):
    """Asyncio client with the methods of :class:`Client`; the slices of a large input go out concurrently
    (at most ``concurrency`` at a time)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, transport: httpx.AsyncBaseTransport | None = None,
                 concurrency: int = 4, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, but got {concurrency}")
        self.concurrency = concurrency
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=transport,
                                       headers=self._headers)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, deadline: float, **kwargs: Any) -> httpx.Response:
        what = f"{method} {self.base_url}{path}"
        for attempt in range(self.retries + 1):
            response, failure = None, None
            left = self._left(what, deadline)
            try:
                async with asyncio.timeout(left):  # the whole exchange, headers and body: cancelled at the deadline
                    response = await self._http.request(method, path, timeout=left, **kwargs)
            except (httpx.HTTPError, TimeoutError) as err:
                failure = err
            answer = self._outcome(what, attempt, response, failure, deadline)
            if answer is not None:
                return answer
            await asyncio.sleep(self._delay(attempt, deadline))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def health(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def models(self, *, deadline: float | None = None) -> ModelsResponse:
        if self._models is None:
            answer = await self._send("GET", "/models", deadline or self._deadline())
            self._models = _readable(f"GET {self.base_url}/models", ModelsResponse.model_validate_json, answer.content)
        return self._models

    async def limits(self) -> Limits:
        return (await self.models()).limits.model_copy(update=self._override)

    async def predict(self, inputs: Any, **options: Any) -> PredictResult:
        """See :meth:`Client.predict`."""
        deadline = self._deadline()
        call = self._call(inputs, options, None if "max_rows" in self._override else await self.models(deadline=deadline))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(part: PredictRequest) -> PredictResult:
            async with gate:
                return call.read(await self._send("POST", "/predict", deadline, **call.http_args(part)))

        return PredictResult.concat(list(await asyncio.gather(*(one(p) for p in call.slices))))

    async def acquire(self, pool: Any, k: int, *, method: str = "bald", **options: Any) -> AcquireResponse:
        """See :meth:`Client.acquire`."""
        body = acquire_body(pool, k, {"method": method, **options})
        response = await self._send("POST", "/acquire", self._deadline(), content=body,
                                    headers={"content-type": "application/json"})
        return _readable(f"POST {self.base_url}/acquire", AcquireResponse.model_validate_json, response.content)
