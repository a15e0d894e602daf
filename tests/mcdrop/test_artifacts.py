"""Model artifacts: round trip, sha256 and shape checks, clear errors, no unpickling."""

import json

import pytest
import torch

from mcdrop.artifacts import ArtifactError, load_model, resolve_model
from tests.tiny_models import write_tiny_models


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_models(tmp_path)["tiny-cls"]


def test_round_trip(tiny):
    model, card = load_model(tiny)
    assert card.name == "tiny-cls" and not model.training
    assert (tiny / "card.md").read_text().startswith("# tiny-cls")
    assert model(torch.zeros(1, 4)).shape == (1, 3)


def test_truncated_weights_are_refused(tiny):
    weights = tiny / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="does not match its card: sha256"):
        load_model(tiny)


def test_tampered_weights_are_refused(tiny):
    weights = tiny / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="truncated or was modified"):
        load_model(tiny)


def test_missing_weights_and_card(tiny):
    (tiny / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"weights\.safetensors is missing"):
        load_model(tiny)
    (tiny / "card.json").unlink()
    with pytest.raises(ArtifactError, match=r"has no card\.json"):
        load_model(tiny)


def test_card_architecture_must_fit_weights(tiny):
    card = json.loads((tiny / "card.json").read_text())
    card["architecture"]["hidden"] = [32]
    (tiny / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="does not fit the architecture"):
        load_model(tiny)


def test_unknown_model_names_the_choices(tmp_path):
    with pytest.raises(ArtifactError, match="model 'nope' not found"):
        resolve_model("nope", tmp_path)
