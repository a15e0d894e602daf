"""The models: ``DropoutMLP`` (a multilayer perceptron with dropout, for classification or regression) and
``DropoutCNN`` (a convolutional classifier with channel dropout).

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
from typing import Any

import torch
from torch import Tensor, nn

from mcdrop.request import Task
from mcdrop.sampling.functional import check_probability
from mcdrop.sampling.layers import ChannelDropout, Dropout

__all__ = ["ARCHITECTURES", "DropoutCNN", "DropoutMLP", "build_model", "describe_architecture", "feature_layers", "logit_layer",
           "multiply_adds"]


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

    input_shift: Tensor  # buffers, registered in __init__ (typed here: nn.Module's __getattr__ cannot say)
    input_scale: Tensor
    target_shift: Tensor
    target_scale: Tensor
    temperature: Tensor
    tau: Tensor

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
        return self.head_output(self.net((x.flatten(1) - self.input_shift) / self.input_scale))

    def head_output(self, z: Tensor) -> Tensor:
        """The outputs from the last layer's ``z`` ``(B, out_features)``: logits / temperature, or the target's
        units (the fused kernel of :mod:`mcdrop.nets.mlp_plan` ends with this too)."""
        if self.head is Task.CLASSIFICATION:
            return z / self.temperature
        if self.head is Task.HOMOSCEDASTIC:
            return z.squeeze(-1) * self.target_scale + self.target_shift
        mean = z[:, 0] * self.target_scale + self.target_shift
        log_var = z[:, 1] + 2.0 * torch.log(self.target_scale)
        return torch.stack([mean, log_var], dim=-1)

    def feature_layers(self) -> list[str]:
        """Names of the modules whose outputs are the hidden features for an OOD density: each hidden layer's
        pre-activation (its Linear) and output (its ReLU)."""
        relus = [i for i, m in enumerate(self.net) if isinstance(m, nn.ReLU)]
        return [f"net.{j}" for i in relus for j in (i - 1, i)]

    def logit_layer(self) -> str | None:
        """The module whose outputs are the logits (before the temperature), for the OOD score's energy term;
        None for a regression head."""
        return f"net.{len(self.net) - 1}" if self.head is Task.CLASSIFICATION else None


class DropoutCNN(nn.Module):
    """A convolutional classifier with channel dropout (the ``dropout2d`` semantics) and a dropout dense head.

    Layout: per block ``i``, ``convs_per_block x (Conv 3x3 (padding 1) -> BatchNorm -> ReLU) -> MaxPool 2x2 ->
    ChannelDropout(channel_dropout[i])`` (whole feature maps dropped), then ``Flatten -> (Linear -> ReLU ->
    Dropout(p_i)) * len(hidden) -> Linear``.  Inputs ``(N, H*W)`` or ``(N, H, W)`` are reshaped to one channel
    and standardised by the scalar buffers ``(x - input_shift) / input_scale``; logits are divided by the stored
    ``temperature``.  MC mode shares everything before the first active dropout (the first block) between passes.

    Args:
        image_shape: ``(H, W)`` of the input images (each pooling halves them, rounding down).
        out_features: classes.
        channels: output channels of each block, e.g. ``(32, 64)``.
        hidden: widths of the dense head's hidden layers.
        channel_dropout: one rate for every block or one per block (0: no dropout layer there).
        dropout: one rate for every dense hidden layer or one per layer.
        convs_per_block: convolutions before each pooling.

    Shape: input ``(N, H*W)`` or ``(N, H, W)`` -> ``(N, out_features)``.
    """

    input_shift: Tensor  # buffers, registered in __init__
    input_scale: Tensor
    temperature: Tensor

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        out_features: int = 10,
        *,
        channels: Sequence[int] = (32, 64),
        hidden: Sequence[int] = (256,),
        channel_dropout: float | Sequence[float] = 0.1,
        dropout: float | Sequence[float] = 0.5,
        convs_per_block: int = 1,
        head: Task | str = Task.CLASSIFICATION,
    ) -> None:
        super().__init__()
        self.head = Task(head)
        if self.head is not Task.CLASSIFICATION:
            raise ValueError(f"DropoutCNN is a classifier: head must be 'classification', but got {self.head.value!r}")
        self.image_shape = [int(d) for d in image_shape]
        if len(self.image_shape) != 2 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (height, width), but got {list(image_shape)}")
        self.channels, self.hidden = [int(c) for c in channels], [int(h) for h in hidden]
        self.channel_dropout = _rates(channel_dropout, len(self.channels), "channel_dropout", "block")
        self.dropout_rates = _rates(dropout, len(self.hidden), "dropout", "hidden layer")
        if convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, but got {convs_per_block}")
        self.out_features, self.convs_per_block = int(out_features), int(convs_per_block)
        self.in_features = self.image_shape[0] * self.image_shape[1]

        layers: list[nn.Module] = []
        width, (h, w) = 1, self.image_shape
        for c, q in zip(self.channels, self.channel_dropout, strict=True):
            for _ in range(self.convs_per_block):
                layers += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                width = c
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
            if q > 0:
                layers.append(ChannelDropout(q))
        if h < 1 or w < 1:
            raise ValueError(f"{len(self.channels)} blocks pool a {self.image_shape} image to nothing")
        layers.append(nn.Flatten())
        width = width * h * w
        for size, r in zip(self.hidden, self.dropout_rates, strict=True):
            layers += [nn.Linear(width, size), nn.ReLU(), Dropout(r)]
            width = size
        layers.append(nn.Linear(width, self.out_features))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_shift", torch.zeros(()))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("temperature", torch.ones(()))
        # Convolution weights channels-last, so the activations follow: oneDNN's NHWC convolutions run the MC
        # passes 1.2-1.3x as fast on a CPU (BENCHMARKS §11).  Loading copies into these strides; saving writes
        # contiguous tensors (artifacts.save_model), so the files are as before.
        self.to(memory_format=torch.channels_last)

    def config(self) -> dict[str, object]:
        """Constructor arguments and ``kind``, JSON-serialisable (the model card stores them)."""
        return {
            "kind": "cnn",
            "image_shape": self.image_shape,
            "out_features": self.out_features,
            "channels": self.channels,
            "hidden": self.hidden,
            "channel_dropout": self.channel_dropout,
            "dropout": self.dropout_rates,
            "convs_per_block": self.convs_per_block,
            "head": self.head.value,
        }

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 1, *self.image_shape)
        return self.net((x - self.input_shift) / self.input_scale) / self.temperature

    def feature_layers(self) -> list[str]:
        """Names of the modules whose outputs are the hidden features for an OOD density: each conv block's pooled
        maps (the last block's flattened) and each dense hidden layer's pre-activation (its Linear) and output
        (its ReLU)."""
        flatten = next(i for i, m in enumerate(self.net) if isinstance(m, nn.Flatten))
        pools = [i for i, m in enumerate(self.net) if isinstance(m, nn.MaxPool2d)][:-1]
        dense = [j for i, m in enumerate(self.net) if isinstance(m, nn.ReLU) and i > flatten for j in (i - 1, i)]
        return [f"net.{i}" for i in (*pools, flatten, *dense)]

    def logit_layer(self) -> str:
        """The module whose outputs are the logits (before the temperature), for the OOD score's energy term."""
        return f"net.{len(self.net) - 1}"


def feature_layers(model: nn.Module) -> list[str]:
    """The modules whose outputs the OOD density models, where the model names them (``model.feature_layers()``;
    mcdrop's MLP and CNN, an imported graph with a last Linear), else none."""
    named = getattr(model, "feature_layers", None)
    return list(named()) if callable(named) else []


def logit_layer(model: nn.Module) -> str | None:
    """The module whose outputs are ``model``'s logits, where the model names one (``model.logit_layer()``; mcdrop's
    classifiers), else None."""
    named = getattr(model, "logit_layer", None)
    return named() if callable(named) else None


def _rates(value: float | Sequence[float], n: int, name: str, what: str) -> list[float]:
    rates = [float(value)] * n if isinstance(value, (int, float)) else [float(r) for r in value]
    if len(rates) != n:
        raise ValueError(f"{name} needs one rate per {what} ({n}), but got {len(rates)}: {rates}")
    for r in rates:
        check_probability(r)
    return rates


def describe_architecture(arch: dict[str, Any]) -> str:
    """One line naming a card's architecture (for model cards and logs)."""
    if arch.get("kind") == "graph":
        modules = arch.get("modules") or []
        kinds = dict.fromkeys(str(m.get("type")) for m in modules if m.get("name") != "mcdrop_features")
        return (f"imported graph: {len(arch.get('nodes') or [])} operations, {len(modules)} layers "
                f"({', '.join(kinds)})")
    if arch.get("kind", "mlp") == "cnn":
        return (f"DropoutCNN {arch.get('image_shape')}: blocks of {arch.get('convs_per_block')} conv(s) with channels "
                f"{arch.get('channels')}, channel dropout {arch.get('channel_dropout')}, dense head "
                f"{arch.get('hidden')} with dropout {arch.get('dropout')} -> {arch.get('out_features')}")
    return (f"DropoutMLP {arch.get('in_features')} -> {arch.get('hidden')} -> {arch.get('out_features')}, "
            f"dropout {arch.get('dropout')}, input dropout {arch.get('input_dropout')}")


ARCHITECTURES: dict[str, type[nn.Module]] = {"mlp": DropoutMLP, "cnn": DropoutCNN}
"""Model classes by the ``kind`` of a card's ``architecture`` (its other keys are constructor arguments)."""


def build_model(architecture: dict[str, Any]) -> nn.Module:
    """The untrained model a card's ``architecture`` describes (``kind`` defaults to ``mlp``)."""
    config = dict(architecture)
    kind = str(config.pop("kind", "mlp"))
    if kind == "graph":  # an imported network (mcdrop.nets): a declarative graph of whitelisted layers and ops
        from mcdrop.nets.graph import ImportedNet

        return ImportedNet(**config)
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
            linear: Any = module  # DropConnectLinear, or a user's linear-like layer: known by its attributes
            total += int(linear.in_features) * int(linear.out_features)

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
