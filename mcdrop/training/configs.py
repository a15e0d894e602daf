"""Training configurations, as plain dataclasses (importing this imports no torch, so the CLI starts fast)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from mcdrop.errors import ParameterError

__all__ = ["LR_SCHEDULES", "ClassifierConfig", "ConfigError", "UCIConfig"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ClassifierConfig:
    """Hyper-parameters of :func:`train_classifier` (every field is a CLI flag of ``mcdrop train``).

    Invalid values raise ``ValueError`` naming the field and what it accepts.
    """

    architecture: str = field(default="mlp", metadata=_help("mlp (DropoutMLP) or cnn (DropoutCNN: conv blocks with "
                                                           "channel dropout, then the dense hidden layers)"))
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=_help("hidden layer widths, e.g. 256 256"))
    dropout: list[float] = field(default_factory=lambda: [0.2, 0.5],
                                 metadata=_help("dropout rate after each hidden layer, in [0, 1)"))
    channels: list[int] = field(default_factory=lambda: [32, 64, 128],
                                metadata=_help("cnn: output channels of each conv block, e.g. 32 64 128"))
    channel_dropout: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2],
                                         metadata=_help("cnn: channel dropout rate after each conv block, in [0, 1)"))
    convs_per_block: int = field(default=1, metadata=_help("cnn: 3x3 convolutions (each with BatchNorm and ReLU) "
                                                           "before each pooling (>= 1)"))
    augment: bool = field(default=False, metadata=_help("random horizontal flips and shifts of up to 2 pixels of the "
                                                        "28x28 training images"))
    shift_augment: bool = field(default=False, metadata=_help(
        "random covariate shifts of half the training images, each change with probability 0.4: an affine map "
        "(rotation up to --shift-rotation degrees, zoom 0.7-1.35, translation up to 5 pixels), Gaussian blur, "
        "contrast, an occluding square, additive noise (after --augment's)"))
    shift_rotation: float = field(default=30.0, metadata=_help(
        "with --shift-augment: the largest rotation in degrees, in [0, 180] (0: none, as fashion-cnn-robust v1)"))
    input_dropout: float = field(default=0.0, metadata=_help("dropout rate on the input pixels, in [0, 1)"))
    optimizer: str = field(default="sgd", metadata=_help("sgd (with --momentum) or adam (AdamW)"))
    lr: float = field(default=0.1, metadata=_help("learning rate (> 0)"))
    momentum: float = field(default=0.0, metadata=_help("SGD momentum, in [0, 1)"))
    schedule: str = field(default="constant", metadata=_help("learning-rate schedule: constant or cosine"))
    epochs: int = field(default=10, metadata=_help("passes over the training split (>= 1)"))
    batch_size: int = field(default=256, metadata=_help("rows per optimiser step (>= 1)"))
    weight_decay: float = field(default=0.0, metadata=_help("L2 weight decay (>= 0)"))
    seed: int = field(default=0, metadata=_help("seed of the split, initialisation, batches and masks"))
    val_fraction: float = field(default=0.1, metadata=_help("share of training images held out for validation, "
                                                             "in [0, 1); > 0 with --calibrate"))
    calibrate: bool = field(default=False, metadata=_help("fit a temperature for the MC mean on the validation split"))
    calibration_samples: int = field(default=50, metadata=_help("MC passes for fitting the temperature and the "
                                                                "calibration (>= 1)"))
    calibration_share: float = field(default=0.5, metadata=_help("share of the held-out rows kept for the conformal, "
                                                                 "OOD and abstention calibration (the rest fit the "
                                                                 "temperature), in (0, 1)"))

    def __post_init__(self) -> None:
        _check(isinstance(self.hidden, list) and len(self.hidden) > 0
               and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden),
               "hidden", "a non-empty list of positive integer widths", self.hidden)
        _check(isinstance(self.dropout, list) and len(self.dropout) == len(self.hidden),
               "dropout", f"one rate per hidden layer ({len(self.hidden)})", self.dropout)
        for p in self.dropout:
            _check(_is_number(p) and 0 <= p < 1, "dropout", "a list of rates in [0, 1)", self.dropout)
        _check(_is_number(self.input_dropout) and 0 <= self.input_dropout < 1, "input_dropout", "a rate in [0, 1)",
               self.input_dropout)
        _check(self.architecture in ("mlp", "cnn"), "architecture", "'mlp' or 'cnn'", self.architecture)
        _check(isinstance(self.channels, list) and len(self.channels) > 0
               and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in self.channels),
               "channels", "a non-empty list of positive integers", self.channels)
        _check(isinstance(self.channel_dropout, list) and len(self.channel_dropout) == len(self.channels)
               and all(_is_number(p) and 0 <= p < 1 for p in self.channel_dropout),
               "channel_dropout", f"one rate in [0, 1) per conv block ({len(self.channels)})", self.channel_dropout)
        _check(self.architecture == "mlp" or self.input_dropout == 0, "input_dropout",
               "0 for the cnn (its first dropout is the channel dropout after the first block)", self.input_dropout)
        _check(_is_number(self.shift_rotation) and 0 <= self.shift_rotation <= 180, "shift_rotation",
               "degrees in [0, 180]", self.shift_rotation)
        _check(self.optimizer in ("sgd", "adam"), "optimizer", "'sgd' or 'adam'", self.optimizer)
        _check(_is_number(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        _check(_is_number(self.momentum) and 0 <= self.momentum < 1, "momentum", "a number in [0, 1)", self.momentum)
        _check(self.schedule in ("constant", "cosine"), "schedule", "'constant' or 'cosine'", self.schedule)
        for name in ("epochs", "batch_size", "calibration_samples", "convs_per_block"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "an integer >= 1", value)
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0",
               self.weight_decay)
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", "an integer", self.seed)
        _check(_is_number(self.val_fraction) and 0 <= self.val_fraction < 1, "val_fraction", "a number in [0, 1)",
               self.val_fraction)
        _check(_is_number(self.calibration_share) and 0 < self.calibration_share < 1, "calibration_share",
               "a number in (0, 1)", self.calibration_share)
        _check(self.val_fraction > 0 or not self.calibrate, "val_fraction",
               "a number > 0 when calibrate is on (the temperature is fitted on the validation split)", self.val_fraction)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_card(cls, training: dict[str, Any]) -> ClassifierConfig:
        """The config a card's ``training`` block records (its other entries, e.g. ``train_seconds``, ignored)."""
        return cls(**{k: v for k, v in training.items() if k in cls.__dataclass_fields__})

    def relevant(self) -> dict[str, Any]:
        """:meth:`as_dict` without the fields the recipe does not use (an MLP has no conv blocks; without
        ``shift_augment`` there is no rotation range)."""
        values = self.as_dict()
        if self.architecture != "cnn":
            for name in CNN_ONLY:
                values.pop(name)
        if not self.shift_augment:
            values.pop("shift_rotation")
        return values


CNN_ONLY = ("channels", "channel_dropout", "convs_per_block")
"""The :class:`ClassifierConfig` fields only the CNN uses."""
LR_SCHEDULES = ("constant", "cosine", "chosen")
"""The values of :attr:`UCIConfig.lr_schedule` ("chosen": per split, on validation, from the first two)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ConfigError(ParameterError):
    """An invalid config value; ``field`` names the config field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field)
        self.field = field


def _check(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(name, f"{name} has to be {expected}, but got {got!r}")


@dataclass
class UCIConfig:
    """Settings of one protocol run (the ``mcdrop bench uci`` flags; ``mcdrop train uci`` takes some of them).

    Invalid values raise :class:`ConfigError` naming the field."""

    epochs_multiplier: float = 10.0  # epochs = n_epochs.txt x this (x10 in the paper's text, x100 in its re-run)
    samples: int = 10_000  # T: stochastic passes for the test metrics (the published runs: 10,000)
    val_samples: int | None = None  # T for the grid search's validation LL (default: samples)
    splits: int | None = None  # first K splits (default: all)
    batch_size: int = 128
    lr: float = 1e-3
    length_scale: float = 1e-2
    val_fraction: float = 0.2
    seed: int = 0
    # heteroscedastic only: beta of the beta-NLL loss (Seitzer et al. 2022), each row's NLL weighted by the
    # constant sigma^(2 beta); 0 is the Gaussian NLL, 1 weighs every row's squared error alike
    beta_nll: float = 0.0
    # the learning rate over the epochs: "constant" (the published protocol) or "cosine" (lr x (1 + cos(pi e / E))
    # / 2 at epoch e of E, ending near 0, so the last epochs do not land on a random point of an oscillation);
    # "chosen": the grid search runs under both, and each split takes the one whose grid reached the higher
    # validation LL, so the schedule is chosen as the rate is (twice the training)
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        _check(_is_number(self.epochs_multiplier) and self.epochs_multiplier > 0, "epochs_multiplier",
               "a number > 0", self.epochs_multiplier)
        for name in ("samples", "val_samples", "splits", "batch_size"):
            value = getattr(self, name)
            if value is not None or name in ("samples", "batch_size"):
                _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                       "an integer >= 1", value)
        _check(_is_number(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        _check(_is_number(self.beta_nll) and 0 <= self.beta_nll <= 1, "beta_nll", "a number in [0, 1]",
               self.beta_nll)
        _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {', '.join(LR_SCHEDULES)}", self.lr_schedule)
        _check(_is_number(self.val_fraction) and 0 < self.val_fraction < 1, "val_fraction", "a number in (0, 1)",
               self.val_fraction)

    def epochs(self, dataset: Any) -> int:
        """``n_epochs.txt`` of ``dataset`` (a :class:`~mcdrop.training.data.UCIDataset`) times the multiplier."""
        return max(1, round(dataset.n_epochs * self.epochs_multiplier))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
