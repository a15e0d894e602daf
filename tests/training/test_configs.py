"""Training configs reject bad values with a message naming the field and what it accepts."""

from __future__ import annotations

import pytest

from mcdrop.training.configs import ClassifierConfig, ConfigError


def test_defaults_are_the_textbook_recipe():
    c = ClassifierConfig()
    assert (c.hidden, c.dropout, c.optimizer, c.lr, c.batch_size, c.epochs) == ([256, 256], [0.2, 0.5], "sgd", 0.1, 256, 10)


@pytest.mark.parametrize(
    ("values", "field", "expected"),
    [
        ({"hidden": []}, "hidden", "non-empty list"),
        ({"hidden": [256, 0], "dropout": [0.5, 0.5]}, "hidden", "positive integer"),
        ({"dropout": [0.2]}, "dropout", "one rate per hidden layer (2)"),
        ({"dropout": [0.2, 1.0]}, "dropout", "[0, 1)"),
        ({"dropout": [0.2, float("nan")]}, "dropout", "[0, 1)"),
        ({"input_dropout": -0.1}, "input_dropout", "[0, 1)"),
        ({"optimizer": "rmsprop"}, "optimizer", "'sgd' or 'adam'"),
        ({"lr": 0}, "lr", "> 0"),
        ({"momentum": 1.0}, "momentum", "[0, 1)"),
        ({"schedule": "step"}, "schedule", "'constant' or 'cosine'"),
        ({"epochs": 0}, "epochs", ">= 1"),
        ({"batch_size": 2.5}, "batch_size", "integer"),
        ({"weight_decay": -1e-4}, "weight_decay", ">= 0"),
        ({"seed": "one"}, "seed", "integer"),
        ({"val_fraction": 1.0}, "val_fraction", "[0, 1)"),
        ({"val_fraction": 0.0, "calibrate": True}, "val_fraction", "calibrate"),
        ({"calibration_samples": 0}, "calibration_samples", ">= 1"),
        ({"shift_rotation": -5.0}, "shift_rotation", "[0, 180]"),
        ({"shift_rotation": 200}, "shift_rotation", "[0, 180]"),
    ],
)
def test_bad_values_name_the_field(values, field, expected):
    with pytest.raises(ConfigError, match=field) as err:
        ClassifierConfig(**values)
    assert err.value.field == field and expected in str(err.value)


def test_the_rotation_range_is_recorded_only_with_the_shift_augmentation():
    assert "shift_rotation" not in ClassifierConfig().relevant()
    assert ClassifierConfig(shift_augment=True, shift_rotation=0.0).relevant()["shift_rotation"] == 0.0


def test_training_on_every_row_is_allowed_without_calibration():
    assert ClassifierConfig(val_fraction=0.0).val_fraction == 0.0


@pytest.mark.parametrize(
    ("values", "field"),
    [({"epochs_multiplier": 0}, "epochs_multiplier"), ({"samples": 0}, "samples"), ({"val_samples": -3}, "val_samples"),
     ({"splits": 0}, "splits"), ({"batch_size": 0}, "batch_size"), ({"lr": -1.0}, "lr"), ({"val_fraction": 0.0}, "val_fraction"),
     ({"beta_nll": 1.5}, "beta_nll"), ({"beta_nll": float("nan")}, "beta_nll"),
     ({"lr_schedule": "linear"}, "lr_schedule")],
)
def test_uci_config_bad_values_name_the_field(values, field):
    from mcdrop.training.configs import UCIConfig

    with pytest.raises(ConfigError, match=field) as err:
        UCIConfig(**values)
    assert err.value.field == field
