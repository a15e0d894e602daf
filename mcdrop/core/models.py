"""``DropoutMLP``: a multilayer perceptron with dropout, for classification or regression.

Layout: ``[Dropout(p_in)] -> (Linear -> ReLU -> Dropout(p_i)) * len(hidden) -> Linear``.
Inputs are flattened and standardised by stored buffers ``(x - input_shift) / input_scale``.

Heads (:class:`~mcdrop.request.Task`):

* ``classification``: logits divided by a stored ``temperature`` (1 unless calibrated). Output ``(N, C)``.
* ``homoscedastic``: the mean in target units, ``y = target_scale * f(x) + target_shift``; the model carries
  a noise precision ``tau`` (in target units), so the aleatoric variance is ``1 / tau``. Output ``(N,)``.
* ``heteroscedastic``: mean and log-variance per input, in target units. Output ``(N, 2)``,
  ``[..., 0]`` the mean and ``[..., 1]`` ``log sigma^2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mcdrop.core.functional import check_probability
from mcdrop.core.layers import Dropout
from mcdrop.request import Task

__all__ = ["ARCHITECTURES", "DropoutMLP", "build_model", "multiply_adds"]


class DropoutMLP(nn.Module):
    """MLP with ReLU and dropout after every hidden activation (and optionally on the input).

    Args:
        in_features: input size (inputs of any shape ``(N, *)`` are flattened to ``(N, in_features)``).
        hidden: sizes of the hidden layers, e.g. ``(256, 256)``.
        out_features: classes for classification; must be 1 for regression heads.
        dropout: one rate for every hidden layer or one rate per hidden layer.
        input_dropout: rate of the dropout on the input (0: no input dropout layer).
        head: a :class:`Task` or its name.
        tau: noise precision for the homoscedastic head (required there, unused otherwise).

    Shape: input ``(N, *)`` -> ``(N, C)``, ``(N,)`` or ``(N, 2)`` by head.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        dropout: float | Sequence[float] = 0.5,
        input_dropout: float = 0.0,
        head: Task | str = Task.CLASSIFICATION,
        tau: float | None = None,
    ) -> None:
        super().__init__()
        self.head = Task(head)
        hidden = [int(h) for h in hidden]
        rates = [float(dropout)] * len(hidden) if isinstance(dropout, (int, float)) else [float(r) for r in dropout]
        if len(rates) != len(hidden):
            raise ValueError(f"dropout needs one rate per hidden layer ({len(hidden)}), but got {len(rates)}: {rates}")
        for r in [*rates, input_dropout]:
            check_probability(r)
        if self.head is not Task.CLASSIFICATION and out_features != 1:
            raise ValueError(f"regression heads predict one target: out_features must be 1, but got {out_features}")
        if self.head is Task.HOMOSCEDASTIC and (tau is None or not tau > 0):
            raise ValueError(f"the homoscedastic head needs a noise precision tau > 0, but got {tau}")
        self.in_features, self.hidden, self.out_features = in_features, hidden, out_features
        self.dropout_rates, self.input_dropout = rates, float(input_dropout)

        layers: list[nn.Module] = [Dropout(input_dropout)] if input_dropout > 0 else []
        width = in_features
        for h, r in zip(hidden, rates, strict=True):
            layers += [nn.Linear(width, h), nn.ReLU(), Dropout(r)]
            width = h
        n_out = 2 if self.head is Task.HETEROSCEDASTIC else out_features
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)

        self.register_buffer("input_shift", torch.zeros(in_features))
        self.register_buffer("input_scale", torch.ones(in_features))
        self.register_buffer("target_shift", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("tau", torch.tensor(float(tau) if tau is not None else math.nan))

    def config(self) -> dict[str, object]:
        """Constructor arguments and ``kind``, JSON-serialisable (the model card stores them)."""
        tau = float(self.tau)
        return {
            "kind": "mlp",
            "in_features": self.in_features,
            "hidden": self.hidden,
            "out_features": self.out_features,
            "dropout": self.dropout_rates,
            "input_dropout": self.input_dropout,
            "head": self.head.value,
            "tau": None if math.isnan(tau) else tau,
        }

    def forward(self, x: Tensor) -> Tensor:
        z = self.net((x.flatten(1) - self.input_shift) / self.input_scale)
        if self.head is Task.CLASSIFICATION:
            return z / self.temperature
        if self.head is Task.HOMOSCEDASTIC:
            return z.squeeze(-1) * self.target_scale + self.target_shift
        mean = z[:, 0] * self.target_scale + self.target_shift
        log_var = z[:, 1] + 2.0 * torch.log(self.target_scale)
        return torch.stack([mean, log_var], dim=-1)

    def feature_layers(self) -> list[str]:
        """Names of the modules whose outputs are the hidden features (each hidden layer's ReLU)."""
        return [f"net.{i}" for i, m in enumerate(self.net) if isinstance(m, nn.ReLU)]


ARCHITECTURES: dict[str, type[nn.Module]] = {"mlp": DropoutMLP}
"""Model classes by the ``kind`` of a card's ``architecture`` (its other keys are constructor arguments)."""


def build_model(architecture: dict[str, object]) -> nn.Module:
    """The untrained model a card's ``architecture`` describes (``kind`` defaults to ``mlp``)."""
    config = dict(architecture)
    kind = str(config.pop("kind", "mlp"))
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture kind {kind!r}: expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[kind](**config)


def multiply_adds(model: nn.Module, example: Tensor) -> int:
    """Multiply-adds of one eval forward pass of ``example`` (one row), counted over linear and conv layers."""
    total = 0

    def count(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features * (output.numel() // module.out_features)
        elif isinstance(module, nn.modules.conv._ConvNd):
            kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
            total += output.numel() * kernel
        elif hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "weight"):
            total += int(module.in_features) * int(module.out_features)  # DropConnectLinear

    handles = [m.register_forward_hook(count) for m in model.modules()]
    was_training = model.training
    try:
        with torch.inference_mode():
            model.eval()(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
