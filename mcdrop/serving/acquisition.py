"""``POST /acquire`` below the door: an :class:`~mcdrop.schemas.AcquireRequest` checked against the served model
and the server's limits, answered by :func:`mcdrop.uncertainty.acquisition.acquire_pool`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mcdrop.plan import with_seed
from mcdrop.request import Task
from mcdrop.schemas import AcquireRequest, AcquireResponse
from mcdrop.serving.errors import InvalidRequest, TooLarge
from mcdrop.serving.predictor import Predictor, Served
from mcdrop.uncertainty.acquisition import acquire_pool

__all__ = ["acquire", "check"]


def check(predictor: Predictor, request: AcquireRequest) -> Served:
    """The served classifier for ``request``, within the server's limits: ``n_samples`` at most ``max_samples``;
    rows x passes x the model's cost within ``max_cost`` (:class:`TooLarge`, 413)."""
    served = predictor.served(request.model)
    card = served.card
    if card.task is not Task.CLASSIFICATION:
        raise InvalidRequest(f"model: acquisition scores class probabilities, but {card.name!r} is a {card.task.value} "
                             "model", "model")
    rows, width = request.inputs.shape
    if width != card.input_size:
        raise InvalidRequest(f"inputs rows have {width} values, but model {card.name!r} expects {card.input_size} "
                             "features per row", "inputs")
    cap = predictor.limits.max_samples
    if request.n_samples > cap:
        raise InvalidRequest(f"n_samples is {request.n_samples}, but this server allows at most {cap}", "n_samples")
    budget = predictor.limits.max_cost
    passes = 0 if request.method == "random" else request.n_samples
    if budget is not None and (cost := rows * passes * served.cost) > budget:
        raise TooLarge(f"this pool needs {cost:.3g} multiply-adds (rows x n_samples x {served.cost:.3g} for model "
                       f"{card.name!r}), beyond this server's budget of {budget:.3g} (MCDROP_MAX_COST): send fewer "
                       "rows or fewer passes", "n_samples")
    return served


def acquire(predictor: Predictor, request: AcquireRequest, *, chunk_rows: int = 1024,
            cancelled: Callable[[], bool] | None = None) -> AcquireResponse:
    """Answer one acquisition request (raises a :class:`~mcdrop.serving.errors.PredictError`)."""
    served = check(predictor, request)
    seed = with_seed(request).seed
    assert seed is not None
    x = torch.from_numpy(np.require(request.inputs, np.float32, ["C", "W"])).to(predictor.device)
    chunks = (x[i:i + chunk_rows] for i in range(0, x.shape[0], chunk_rows))
    got = acquire_pool(served.engine, chunks, request.k, request.method, n_samples=request.n_samples, seed=seed,
                       cancelled=cancelled)
    return AcquireResponse(model=served.card.name, model_version=served.card.version, method=request.method, seed=seed,
                           n_samples=request.n_samples, indices=got.indices.tolist(), scores=got.scores.tolist())
