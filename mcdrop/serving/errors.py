"""Why the predictor refuses or stops a request, as exception classes: no HTTP status codes here.

The service maps each class to a status (:mod:`mcdrop.service.app`); the CLI to a message and an exit code.
Every error names the request field at fault (``field``) where there is one.
"""

from __future__ import annotations

from mcdrop.errors import MCDropError

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "InvalidRequest",
    "OutputOverflow",
    "Overloaded",
    "PredictError",
    "TooLarge",
    "UnknownModel",
]


class PredictError(MCDropError):
    """A request the predictor refuses or could not finish; ``field`` names the request field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownModel(PredictError):
    """The request names a model this server does not serve."""


class InvalidRequest(PredictError):
    """The request does not fit the model (row width, an uncalibrated model asked for sets) or the server's caps."""


class TooLarge(PredictError):
    """More rows, or more work (rows x passes x the model's cost), than the server accepts in one request."""


class OutputOverflow(PredictError):
    """An input so far out of range that the model's output overflowed to NaN or infinity."""


class Overloaded(PredictError):
    """The queued work would not finish before this request's deadline: retry later."""


class DeadlineExceeded(PredictError):
    """The request's time ran out; its remaining work was cancelled."""


class Cancelled(PredictError):
    """The client went away; the request's remaining work was cancelled."""
