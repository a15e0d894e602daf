"""Importing a user's network: :func:`export_model` (a trained ``nn.Module`` -> a model folder) and
:func:`calibrate_model` (its calibration from the user's held-out data)."""

from mcdrop.nets.calibrate import CalibrationDataError, calibrate_model
from mcdrop.nets.export import ExportError, export_model, import_module

__all__ = ["CalibrationDataError", "ExportError", "calibrate_model", "export_model", "import_module"]
