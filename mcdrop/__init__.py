"""mcdrop: Monte Carlo dropout uncertainty.

Dropout layers (:mod:`mcdrop.layers`), a dropout MLP (:mod:`mcdrop.models`), the batched MC engine
(:mod:`mcdrop.engine`) and uncertainty math (:mod:`mcdrop.uncertainty`).  See :mod:`mcdrop.engine` for
the conventions shared by everything: samples first ``(S, B, ...)``, randomness only through a seed.
"""

from mcdrop.engine import DropoutConfigError, MCEngine, MCResult, Mode, dropout_layers
from mcdrop.layers import ChannelDropout, DropConnectLinear, Dropout, GaussianDropout, MCDropoutLayer
from mcdrop.models import DropoutMLP, Head
from mcdrop.uncertainty import ClassificationSummary, RegressionSummary

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
