"""mcdrop: Monte Carlo dropout uncertainty.

Sampling (:mod:`mcdrop.sampling`: keyed RNG, dropout layers, the MC engine), networks (:mod:`mcdrop.nets`: models,
artifacts, importing a user's network), uncertainty math (:mod:`mcdrop.uncertainty`), the
service's predictor (:mod:`mcdrop.serving`), the HTTP service (:mod:`mcdrop.service`), training
(:mod:`mcdrop.training`), file readers and writers (:mod:`mcdrop.io`), and the torch-free request vocabulary,
schemas and client (:mod:`mcdrop.request`, :mod:`mcdrop.schemas`, :mod:`mcdrop.client`).  See
:mod:`mcdrop.sampling.engine` for the conventions shared by everything: samples first ``(S, B, ...)``,
randomness only through a seed.  Every exception it raises on purpose is an :class:`MCDropError`
(the tree is drawn in :mod:`mcdrop.errors`).

The names below are loaded on first use, so ``import mcdrop`` (and the client) imports no torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AsyncClient": "mcdrop.client", "Client": "mcdrop.client",
    "Mode": "mcdrop.request", "Task": "mcdrop.request",
    "MCDropError": "mcdrop.errors",
    "PredictRequest": "mcdrop.schemas", "PredictResult": "mcdrop.schemas",
    "DropoutConfigError": "mcdrop.sampling.engine", "MCEngine": "mcdrop.sampling.engine",
    "SamplingCancelled": "mcdrop.sampling.engine", "dropout_layers": "mcdrop.sampling.engine",
    "register_dropout": "mcdrop.sampling.engine", "register_fast_path": "mcdrop.sampling.engine",
    "ChannelDropout": "mcdrop.sampling.layers", "DropConnectLinear": "mcdrop.sampling.layers",
    "Dropout": "mcdrop.sampling.layers",
    "GaussianDropout": "mcdrop.sampling.layers", "MCDropoutLayer": "mcdrop.sampling.layers",
    "DropoutMLP": "mcdrop.nets.models",
    "Prediction": "mcdrop.uncertainty.prediction", "predict": "mcdrop.uncertainty.prediction",
    "ClassificationSummary": "mcdrop.uncertainty.summaries", "RegressionSummary": "mcdrop.uncertainty.summaries",
    "summarize": "mcdrop.uncertainty.summaries",
    "load_artifact": "mcdrop.nets.artifacts", "load_model": "mcdrop.nets.artifacts", "save_model": "mcdrop.nets.artifacts",
    "Predictor": "mcdrop.serving.predictor",
    "ExportError": "mcdrop.nets.export", "export_model": "mcdrop.nets.export", "calibrate_model": "mcdrop.training.imported",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mcdrop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.2.0"

__all__ = sorted([*_EXPORTS, "__version__"])
