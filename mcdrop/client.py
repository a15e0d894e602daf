"""Python client of the mcdrop HTTP service: :class:`Client` (blocking) and :class:`AsyncClient`.

Needs only httpx, pydantic and NumPy (importing it imports neither torch nor BentoML). Requests and
responses are the shared schemas of :mod:`mcdrop.schemas`.

* Inputs: a NumPy array, a list of lists or a torch tensor, shape ``(B, D)`` (or ``(B, 28, 28)`` images,
  flattened).
* Large inputs are split into requests of at most the server's ``max_rows`` and ``max_body_bytes``
  (read once from ``GET /models``), sent with ``row_offset`` and one seed, and re-assembled in order,
  so the answer equals the one a single request would get.
* Inputs travel as float32 written with 9 significant digits (exact for float32, which is what the
  engine computes in): about 40% less JSON and 2.5x faster to encode than Python's float repr.
* Errors: a 4xx answer raises :class:`APIError` (``status``, ``field``, ``message``); connection
  failures, dropped connections and 503s are retried ``retries`` times with exponential backoff
  (``backoff * 2**attempt`` seconds) and then raise :class:`UnavailableError`; a request that takes
  longer than ``timeout`` raises :class:`RequestTimeout` (not retried: the server may still be busy).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np

from mcdrop.schemas import Limits, ModelsResponse, PredictRequest, PredictResponse

__all__ = ["APIError", "AsyncClient", "Client", "ClientError", "RequestTimeout", "UnavailableError"]

DEFAULT_URL = "http://127.0.0.1:3000"
_RETRY_STATUS = frozenset({502, 503, 504})
_RETRY_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ClientError(Exception):
    """Base class of the client's errors."""


class APIError(ClientError):
    """The server refused the request (4xx, or 5xx other than 502/503/504).

    Attributes:
        status: HTTP status; field: the request field at fault (e.g. ``"inputs"``, ``"n_samples"``), if
        named; message: the server's explanation; detail: BentoML's validation details, if any.
    """

    def __init__(self, status: int, message: str, field: str | None = None, detail: Any = None) -> None:
        super().__init__(f"HTTP {status}" + (f" ({field})" if field else "") + f": {message}")
        self.status, self.message, self.field, self.detail = status, message, field, detail


class UnavailableError(ClientError):
    """The server could not be reached, or kept answering 502/503/504, after every retry."""


class RequestTimeout(ClientError):
    """No answer within the client's timeout."""


def _as_rows(inputs: Any) -> np.ndarray:
    """``inputs`` as a float64 array ``(B, D)``; torch tensors are read without importing torch."""
    if hasattr(inputs, "detach") and hasattr(inputs, "cpu"):
        inputs = inputs.detach().cpu().numpy()
    try:
        array = np.asarray(inputs, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"inputs must be numbers shaped (rows, features): {err}") from err
    if array.ndim == 1 or array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"inputs must hold at least one row, shaped (rows, features), but got shape {array.shape}")
    rows = array.reshape(array.shape[0], -1).astype(np.float32)
    finite = np.isfinite(rows).all(1)
    if not finite.all():
        raise ValueError(f"inputs[{int(np.argmin(finite))}] holds NaN or infinity (or a value beyond float32); "
                         "expected finite numbers")
    return rows


def _encode(rows: np.ndarray, fields: dict[str, Any]) -> bytes:
    """The request body; ``rows`` (float32) as JSON numbers with 9 significant digits (exact for float32)."""
    line = ",".join(["%.9g"] * rows.shape[1])
    inputs = "[[" + "],[".join(line % tuple(r) for r in rows.tolist()) + "]]"
    rest = json.dumps(fields, allow_nan=False)
    return ('{"inputs":' + inputs + ("," + rest[1:] if fields else "}")).encode()


def _error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        return APIError(response.status_code, response.text.strip() or response.reason_phrase)
    if not isinstance(body, dict):
        return APIError(response.status_code, str(body))
    field, detail = body.get("field"), body.get("detail")
    if field is None and isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = [str(part) for part in detail[0].get("loc", []) if part not in ("body",)]
        field = ".".join(loc) or None
    message = body.get("error") or (detail[0].get("msg") if isinstance(detail, list) and detail else None)
    return APIError(response.status_code, str(message or body), field, detail)


def merge(responses: Sequence[PredictResponse]) -> PredictResponse:
    """Responses to consecutive slices of one input, as one response (samples joined along rows)."""
    first = responses[0]
    if len(responses) == 1:
        return first
    predictions = [p for r in responses for p in r.predictions]
    samples = None
    if all(r.samples is not None for r in responses):
        depth = max(len(r.samples) for r in responses)  # type: ignore[arg-type]
        samples = [
            [row for r in responses for row in (r.samples[s] if s < len(r.samples) else [None] * len(r.predictions))]
            for s in range(depth)
        ]
    return first.model_copy(update={"predictions": predictions, "samples": samples})


class _Base:
    """What both clients share: configuration, request building, splitting, answers and errors."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_rows: int | None = None,
        max_body_bytes: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, but got {retries}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, but got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._override = {k: v for k, v in {"max_rows": max_rows, "max_body_bytes": max_body_bytes}.items() if v}
        self._limits: Limits | None = Limits(**self._override) if max_rows else None
        self._headers = {"accept": "application/json", **(headers or {})}

    def _delay(self, attempt: int) -> float:
        return self.backoff * 2**attempt

    def _requests(self, inputs: Any, limits: Limits, options: dict[str, Any]) -> Iterator[tuple[int, bytes]]:
        """(rows, JSON body) per slice within the server's row and body limits; every slice has the same seed."""
        rows = _as_rows(inputs)
        offset = int(options.pop("row_offset", 0) or 0)
        if options.get("seed") is None and options.get("mode", "mc") == "mc":
            options["seed"] = secrets.randbits(63)  # one seed for all slices: the answer is one sample
        fields = {k: v for k, v in options.items() if v is not None}
        PredictRequest.model_validate({"inputs": [[0.0]], **fields})  # fail fast, before any HTTP, on bad options
        yield from self._slices(rows, offset, limits, fields)

    def _slices(self, rows: np.ndarray, offset: int, limits: Limits, fields: dict[str, Any]) -> Iterator[tuple[int, bytes]]:
        for start in range(0, rows.shape[0], limits.max_rows):
            chunk = rows[start : start + limits.max_rows]
            body = _encode(chunk, {**fields, "row_offset": offset + start})
            if len(body) > limits.max_body_bytes and len(chunk) > 1:  # halve until each part fits
                half = Limits(max_rows=(len(chunk) + 1) // 2, max_samples=limits.max_samples,
                              max_body_bytes=limits.max_body_bytes)
                yield from self._slices(chunk, offset + start, half, fields)
            else:
                yield chunk.shape[0], body

    def _outcome(
        self, what: str, attempt: int, response: httpx.Response | None, failure: Exception | None
    ) -> httpx.Response | None:
        """The answer to return, None to retry, or the error to raise for one attempt's outcome."""
        last = attempt == self.retries
        if isinstance(failure, httpx.TimeoutException):
            raise RequestTimeout(f"{what}: no answer within {self.timeout} s") from failure
        if failure is not None:
            if not isinstance(failure, _RETRY_ERRORS):
                raise failure
            if last:
                raise UnavailableError(f"{what}: {failure or type(failure).__name__} "
                                       f"(after {attempt + 1} attempts)") from failure
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


_JSON_HEADERS = {"content-type": "application/json"}


class Client(_Base):
    """Blocking client.  Use as a context manager, or call :meth:`close`.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:3000``.
        timeout: seconds per HTTP request.
        retries: extra attempts after a connection failure or a 502/503/504.
        backoff: first retry delay in seconds (doubling).
        max_rows, max_body_bytes: request limits (default: the server's, from ``GET /models``; with
            ``max_rows`` given the server is not asked, and ``max_body_bytes`` defaults to 16 MiB).
        transport: an httpx transport (for tests, proxies, or ``httpx.MockTransport``).
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

    def _send(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response, failure = None, None
            try:
                response = self._http.request(method, path, content=content, headers=_JSON_HEADERS if content else None)
            except httpx.HTTPError as err:
                failure = err
            answer = self._outcome(f"{method} {self.base_url}{path}", attempt, response, failure)
            if answer is not None:
                return answer
            time.sleep(self._delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def health(self) -> bool:
        """Whether the service is up and ready (``/readyz`` answers 200); never raises."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> ModelsResponse:
        """The served models' cards, the default model and the limits (``GET /models``)."""
        return ModelsResponse.model_validate_json(self._send("GET", "/models").content)

    def limits(self) -> Limits:
        """The server's request limits (fetched once), with the constructor's overrides."""
        if self._limits is None:
            self._limits = self.models().limits.model_copy(update=self._override)
        return self._limits

    def predict(self, inputs: Any, **options: Any) -> PredictResponse:
        """Predictions with uncertainty for every row of ``inputs``.

        Options are the request fields of :class:`~mcdrop.schemas.PredictRequest`: ``model``, ``mode``
        (``"deterministic"`` | ``"mc"``), ``n_samples``, ``seed``, ``tolerance``, ``max_samples``, ``level``,
        ``return_samples``, ``row_offset``.
        """
        parts = [
            PredictResponse.model_validate_json(self._send("POST", "/predict", body).content)
            for _, body in self._requests(inputs, self.limits(), dict(options))
        ]
        return merge(parts)


class AsyncClient(_Base):
    """Asyncio client with the methods of :class:`Client`; slices of a large input go out concurrently
    (at most ``concurrency`` at a time)."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, transport: httpx.AsyncBaseTransport | None = None,
        concurrency: int = 4, **kwargs: Any,
    ) -> None:
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

    async def _send(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response, failure = None, None
            try:
                response = await self._http.request(method, path, content=content,
                                                    headers=_JSON_HEADERS if content else None)
            except httpx.HTTPError as err:
                failure = err
            answer = self._outcome(f"{method} {self.base_url}{path}", attempt, response, failure)
            if answer is not None:
                return answer
            await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def health(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def models(self) -> ModelsResponse:
        return ModelsResponse.model_validate_json((await self._send("GET", "/models")).content)

    async def limits(self) -> Limits:
        if self._limits is None:
            self._limits = (await self.models()).limits.model_copy(update=self._override)
        return self._limits

    async def predict(self, inputs: Any, **options: Any) -> PredictResponse:
        """See :meth:`Client.predict`."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(body: bytes) -> PredictResponse:
            async with gate:
                return PredictResponse.model_validate_json((await self._send("POST", "/predict", body)).content)

        bodies = [body for _, body in self._requests(inputs, await self.limits(), dict(options))]
        return merge(await asyncio.gather(*(one(b) for b in bodies)))
