"""mcdrop/inputs.py: uint8 pixels divided by 255 at every door, and the note for 0-255 inputs sent as numbers."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop.inputs import input_range, range_note, scale_for, to_model_range
from mcdrop.schemas import ModelCard
from mcdrop.wire import decode_npy, encode_npy

PIXELS = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


def card(**fields) -> ModelCard:
    base = {"name": "m", "version": "1", "task": "classification", "architecture": {}, "input_shape": [784],
            "input_size": 784, "normalisation": "none", "created": "now", "library_version": "0",
            "weights_sha256": "0", "parameter_shapes": {}}
    return ModelCard.model_validate({**base, **fields})


def test_uint8_is_divided_by_255_and_other_dtypes_pass_unchanged():
    scaled = to_model_range(PIXELS)
    assert scaled.dtype == np.float32 and scaled.max() <= 1.0
    np.testing.assert_array_equal(scaled, PIXELS.astype(np.float32) * np.float32(1 / 255))
    floats = PIXELS.astype(np.float32)
    assert to_model_range(floats) is floats
    assert scale_for(np.uint8) == 1 / 255 and scale_for(np.int16) == 1.0 and scale_for(np.float64) == 1.0


def test_the_npy_decoder_divides_uint8_like_the_cli():
    """The service's .npy bodies go through the same function as the CLI's files (they were taken as 0-255)."""
    np.testing.assert_array_equal(decode_npy(encode_npy(PIXELS)), to_model_range(PIXELS))
    floats = np.linspace(0, 3, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(decode_npy(encode_npy(floats)), floats)


def test_the_input_range_comes_from_the_card_or_its_normalisation_text():
    assert input_range(card(input_range=[0, 1])) == (0.0, 1.0)
    assert input_range(card(normalisation="pixels scaled to [0, 1] (value / 255)")) == (0.0, 1.0)
    assert input_range(card()) is None
    assert input_range(card(input_range=[-1, 1], normalisation="in [0, 1]")) == (-1.0, 1.0)


@pytest.mark.parametrize(("x", "warns"), [
    (PIXELS.reshape(5, -1).astype(np.float32), True),           # pixels as numbers
    (PIXELS.reshape(5, -1).astype(np.float32) / 255, False),    # scaled as the card asks
    (np.full((2, 784), 1.5, np.float32), False),                # slightly out of range: not pixels
    (np.full((2, 784), 300.0, np.float32), False),              # beyond 255: not pixels
    (np.linspace(-3, 200, 784, dtype=np.float32)[None], False),  # negative values: standardised data, not pixels
])
def test_a_note_when_inputs_look_like_0_to_255_for_a_model_expecting_0_to_1(x, warns):
    note = range_note(x, card(input_range=[0, 1]))
    assert (note is not None) == warns
    if warns:
        assert "0-255" in note and "'m'" in note and "[0, 1]" in note and "divide them by 255" in note
    assert range_note(x, card()) is None  # a card that states no range: nothing to compare with
