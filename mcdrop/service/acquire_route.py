"""``POST /acquire``: a JSON :class:`~mcdrop.schemas.AcquireRequest` -> :class:`~mcdrop.schemas.AcquireResponse`.

The pool is bounded by the body size (``MCDROP_MAX_BODY_BYTES``) and by rows x passes x the model's cost
(``MCDROP_MAX_COST``, 413 beyond), as ``/predict`` is; the work runs in a worker thread, off the event loop.
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from mcdrop.schemas import AcquireRequest
from mcdrop.service.app import STATUS, _validation_response, error_response, parse_in_one_thread
from mcdrop.serving import acquisition
from mcdrop.serving.errors import PredictError

__all__ = ["answer_acquire"]


async def answer_acquire(svc: Any, request: Request) -> Response:
    """``POST /acquire`` for the running service ``svc`` (BentoML's API method and :func:`create_app` answer with it)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("application/json", ""):
        return error_response(f"/acquire reads a JSON body, but the content-type is {media[:50]!r}", "body", 415)
    body = await request.body()
    limit = svc.predictor.limits.max_body_bytes
    if len(body) > limit:
        return error_response(f"the body has {len(body)} bytes, but this server accepts at most {limit} "
                              "(MCDROP_MAX_BODY_BYTES): send a smaller pool", "body", 413)
    if not body.strip():
        return error_response("the request body is empty; expected a JSON object with inputs and k", "body", 400)
    try:
        parsed = await parse_in_one_thread(AcquireRequest.model_validate_json, body)
    except ValidationError as err:
        return _validation_response(err)
    try:
        answer = await anyio.to_thread.run_sync(acquisition.acquire, svc.predictor, parsed)
    except PredictError as err:
        return error_response(str(err), err.field, STATUS[type(err)])
    return Response(answer.model_dump_json(), media_type="application/json")
