"""Training configurations, as plain dataclasses (importing this imports no torch, so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ClassifierConfig", "UCIConfig"]


@dataclass
class ClassifierConfig:
    """Hyper-parameters of :func:`train_classifier` (every field is a CLI flag of ``mcdrop train``)."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: list[float] = field(default_factory=lambda: [0.2, 0.5])
    input_dropout: float = 0.0
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.0
    schedule: str = "constant"  # constant | cosine
    epochs: int = 10
    batch_size: int = 256
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    calibrate: bool = False  # fit a temperature for the MC mean on the validation split
    calibration_samples: int = 50

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UCIConfig:
    """Settings of one protocol run (the ``mcdrop bench uci`` flags)."""

    epochs_multiplier: float = 10.0  # epochs = n_epochs.txt x this (x10 in the paper's text, x100 in its re-run)
    samples: int = 10_000  # T: stochastic passes for the test metrics (the published runs: 10,000)
    val_samples: int | None = None  # T for the grid search's validation LL (default: samples)
    splits: int | None = None  # first K splits (default: all)
    batch_size: int = 128
    lr: float = 1e-3
    length_scale: float = 1e-2
    val_fraction: float = 0.2
    seed: int = 0

    def epochs(self, dataset: Any) -> int:
        """``n_epochs.txt`` of ``dataset`` (a :class:`~mcdrop.data.UCIDataset`) times the multiplier."""
        return max(1, round(dataset.n_epochs * self.epochs_multiplier))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
