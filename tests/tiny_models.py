"""Small models written to a temporary directory, so tests do not depend on trained artifacts."""

from __future__ import annotations

from pathlib import Path

import torch

from mcdrop import DropoutMLP
from mcdrop.core.artifacts import save_model


def write_tiny_models(directory: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    cls = DropoutMLP(4, [16], 3, dropout=0.3)
    reg = DropoutMLP(3, [16], 1, dropout=0.2, head="homoscedastic", tau=4.0)
    paths = {"tiny-cls": directory / "tiny-cls", "tiny-reg": directory / "tiny-reg"}
    save_model(
        cls,
        paths["tiny-cls"],
        {
            "name": "tiny-cls",
            "version": "1",
            "task": "classification",
            "input_shape": [4],
            "input_size": 4,
            "normalisation": "none",
            "class_names": ["a", "b", "c"],
        },
    )
    save_model(
        reg,
        paths["tiny-reg"],
        {
            "name": "tiny-reg",
            "version": "1",
            "task": "homoscedastic",
            "input_shape": [3],
            "input_size": 3,
            "normalisation": "none",
            "tau": 4.0,
        },
    )
    return paths
