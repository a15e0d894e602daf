"""mcdrop: Monte Carlo dropout uncertainty.

Dropout layers (:mod:`mcdrop.layers`), a dropout MLP (:mod:`mcdrop.models`), the batched MC engine
(:mod:`mcdrop.engine`) and uncertainty math (:mod:`mcdrop.uncertainty`).  See :mod:`mcdrop.engine` for
the conventions shared by everything: samples first ``(S, B, ...)``, randomness only through a seed.
"""

from importlib import import_module
from typing import Any

# Lazy exports (PEP 562): ``import mcdrop.client`` or ``mcdrop.schemas`` must not import torch.
_EXPORTS = {
    "DropoutConfigError": "mcdrop.engine", "MCEngine": "mcdrop.engine", "MCResult": "mcdrop.engine",
    "Mode": "mcdrop.engine", "dropout_layers": "mcdrop.engine",
    "ChannelDropout": "mcdrop.layers", "DropConnectLinear": "mcdrop.layers", "Dropout": "mcdrop.layers",
    "GaussianDropout": "mcdrop.layers", "MCDropoutLayer": "mcdrop.layers",
    "DropoutMLP": "mcdrop.models", "Head": "mcdrop.models",
    "ClassificationSummary": "mcdrop.uncertainty", "RegressionSummary": "mcdrop.uncertainty",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mcdrop' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ChannelDropout",
    "ClassificationSummary",
    "DropConnectLinear",
    "Dropout",
    "DropoutConfigError",
    "DropoutMLP",
    "GaussianDropout",
    "Head",
    "MCDropoutLayer",
    "MCEngine",
    "MCResult",
    "Mode",
    "RegressionSummary",
    "__version__",
    "dropout_layers",
]
