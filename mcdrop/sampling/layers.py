"""Dropout modules.  Each stores its hyperparameters and delegates to :mod:`mcdrop.sampling.functional`.

Every module behaves like torch's under ``train()``/``eval()`` and also implements
``mc_forward(x, keys)``, the keyed Monte Carlo pass that :class:`mcdrop.sampling.engine.MCEngine` switches on
(torch's own ``nn.Dropout`` and ``nn.Dropout1d/2d/3d`` are recognised by the engine as well).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mcdrop.sampling import functional as F

__all__ = ["ChannelDropout", "DropConnectLinear", "Dropout", "GaussianDropout", "MCDropoutLayer"]


class MCDropoutLayer(nn.Module):
    """Base class of mcdrop's dropout modules: a rate ``p`` and a keyed MC forward."""

    p: float

    def mc_forward(self, x: Tensor, keys: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Keyed stochastic forward. Shape: x ``(B, *)`` or ``(S*B, *)``, keys ``(S, B)`` -> ``(S*B, *)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout(MCDropoutLayer):
    """Inverted dropout: zero each element with probability ``p``, scale survivors by ``1/(1-p)``.

    Args:
        p: probability of an element to be zeroed, ``0 <= p <= 1``. Default: 0.5.
        inplace: overwrite the input in training mode. Default: False.

    Shape: input ``(*)``, output ``(*)``, the same shape.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = F.check_probability(p)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training, self.inplace)

    def mc_forward(self, x: Tensor, keys: Tensor) -> Tensor:
        return F.mc_dropout(x, keys, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class ChannelDropout(MCDropoutLayer):
    """Zero whole channels with probability ``p`` (the semantics of ``dropout1d``/``dropout2d``).

    Args:
        p: probability of a channel to be zeroed. Default: 0.5.

    Shape: input ``(N, C, L)`` or ``(N, C, H, W)`` (any ``(N, C, *)``), output the same.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = F.check_probability(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.channel_dropout(x, self.p, self.training)

    def mc_forward(self, x: Tensor, keys: Tensor) -> Tensor:
        return F.mc_channel_dropout(x, keys, self.p)


class GaussianDropout(MCDropoutLayer):
    """Multiplicative Gaussian noise with mean 1 and variance ``p / (1 - p)``.

    Args:
        p: the Bernoulli rate whose variance the noise matches, ``0 <= p < 1``. Default: 0.5.

    Shape: input ``(*)``, output the same.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = F.check_probability(p, allow_one=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.gaussian_dropout(x, self.p, self.training)

    def mc_forward(self, x: Tensor, keys: Tensor) -> Tensor:
        return F.mc_gaussian_dropout(x, keys, self.p)


class DropConnectLinear(MCDropoutLayer):
    """``y = x (W * M / (1 - p))^T + b`` with ``M ~ Bernoulli(1 - p)`` over the individual weights.

    Args:
        in_features: size of each input row.
        out_features: size of each output row.
        bias: learn an additive bias. Default: True.
        p: probability of a weight to be dropped. Default: 0.5.

    Shape: input ``(N, in_features)``, output ``(N, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5) -> None:
        super().__init__()
        self.p = F.check_probability(p)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Linear``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropconnect_linear(x, self.weight, self.bias, self.p, self.training)

    def mc_forward(self, x: Tensor, keys: Tensor) -> Tensor:
        return F.mc_dropconnect_linear(x, keys, self.weight, self.bias, self.p)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, p={self.p}"
