"""mcdrop: Monte Carlo dropout uncertainty.

The sampling core (:mod:`mcdrop.core`: layers, models, the MC engine, uncertainty math, calibration), the
service's predictor (:mod:`mcdrop.serving`), the HTTP service (:mod:`mcdrop.service`), training
(:mod:`mcdrop.training`), file readers and writers (:mod:`mcdrop.io`), and the torch-free request vocabulary,
schemas and client (:mod:`mcdrop.request`, :mod:`mcdrop.schemas`, :mod:`mcdrop.client`).  See
:mod:`mcdrop.core.engine` for the conventions shared by everything: samples first ``(S, B, ...)``,
randomness only through a seed.

The names below are loaded on first use, so ``import mcdrop`` (and the client) imports no torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AsyncClient": "mcdrop.client", "Client": "mcdrop.client",
    "Mode": "mcdrop.request", "Task": "mcdrop.request",
    "PredictRequest": "mcdrop.schemas", "PredictResult": "mcdrop.schemas",
    "DropoutConfigError": "mcdrop.core.engine", "MCEngine": "mcdrop.core.engine",
    "SamplingCancelled": "mcdrop.core.engine", "dropout_layers": "mcdrop.core.engine",
    "register_dropout": "mcdrop.core.engine",
    "ChannelDropout": "mcdrop.core.layers", "DropConnectLinear": "mcdrop.core.layers", "Dropout": "mcdrop.core.layers",
    "GaussianDropout": "mcdrop.core.layers", "MCDropoutLayer": "mcdrop.core.layers",
    "DropoutMLP": "mcdrop.core.models",
    "Prediction": "mcdrop.core.prediction", "predict": "mcdrop.core.prediction",
    "ClassificationSummary": "mcdrop.core.uncertainty", "RegressionSummary": "mcdrop.core.uncertainty",
    "summarize": "mcdrop.core.uncertainty",
    "load_artifact": "mcdrop.core.artifacts", "load_model": "mcdrop.core.artifacts", "save_model": "mcdrop.core.artifacts",
    "Predictor": "mcdrop.serving.predictor",
    "ExportError": "mcdrop.nets.export", "export_model": "mcdrop.nets.export", "calibrate_model": "mcdrop.nets.calibrate",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mcdrop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.2.0"

__all__ = sorted([*_EXPORTS, "__version__"])
