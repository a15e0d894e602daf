"""The dropout chapter's seven exercises (Dive into Deep Learning, §5.6) as reproducible studies.

Each study is a module with ``NAME``, ``TITLE`` and ``run(ctx) -> StudyResult``; ``mcdrop study NAME -o DIR``
runs one and writes ``results.json``, ``table.md`` and PNG plots (:mod:`mcdrop.training.studies.common`).
This package imports no torch until a study is loaded.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["STUDIES", "load_study"]

STUDIES: dict[str, str] = {
    "rates": "1. swap the two layers' dropout rates, and a grid around them",
    "epochs": "2. many more epochs with and without dropout: where overfitting begins",
    "activations": "3. the variance of each hidden layer's activations over training",
    "test-time": "4. dropout at test time: deterministic vs MC as N grows, and its cost",
    "weight-decay": "5. dropout, weight decay and both: additive, diminishing or cancelling?",
    "dropconnect": "6. dropout on the weights (DropConnect) vs on the activations",
    "noise": "7. Gaussian multiplicative noise and Concrete dropout vs dropout",
    "active-learning": "8. what to label next: random, entropy, BALD and BatchBALD from 100 to 1,100 labels",
}
"""Study names and what each answers, in the chapter's order."""


def load_study(name: str) -> ModuleType:
    """The module of study ``name`` (one of :data:`STUDIES`)."""
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}: expected one of {', '.join(STUDIES)}")
    return importlib.import_module(f"mcdrop.training.studies.{name.replace('-', '_')}")
