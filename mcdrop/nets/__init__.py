"""Networks: the models (:mod:`~mcdrop.nets.models`, :mod:`~mcdrop.nets.concrete`), their artifacts on disk
(:mod:`~mcdrop.nets.artifacts`), importing a user's network (:func:`export_model`: a trained ``nn.Module`` -> a
model folder; its calibration is fitted by :func:`mcdrop.training.imported.calibrate_model`), and the fast paths
that the DropoutMLP and the DropoutCNN register with the engine (:mod:`~mcdrop.nets.mlp_plan`,
:mod:`~mcdrop.nets.cnn_plan`, imported here so that they are registered wherever the models exist)."""

from importlib import import_module as _import
from typing import Any

from mcdrop.nets import cnn_plan as cnn_plan  # registers the DropoutCNN fast path with the engine
from mcdrop.nets import mlp_plan as mlp_plan  # registers the DropoutMLP fast path with the engine

_EXPORTS = {"ExportError": "mcdrop.nets.export", "export_model": "mcdrop.nets.export",
            "import_module": "mcdrop.nets.export"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(_import(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mcdrop.nets' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
