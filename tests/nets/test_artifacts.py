"""Model artifacts: round trip, sha256 and shape checks, clear errors, no unpickling."""

import json

import pytest
import torch

from mcdrop.nets.artifacts import ArtifactError, available_models, bundled_models_dir, load_model, model_path, resolve_model
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


def test_unknown_architecture_and_invalid_card(tiny):
    card = json.loads((tiny / "card.json").read_text())
    card["architecture"]["kind"] = "transformer"
    (tiny / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="unknown architecture kind 'transformer'"):
        load_model(tiny)
    (tiny / "card.json").write_text('{"name": "x"')
    with pytest.raises(ArtifactError, match=r"card\.json is not a valid model card"):
        load_model(tiny)


def test_cost_per_pass_is_counted(tiny):
    _, card = load_model(tiny)
    assert card.cost == 4 * 16 + 16 * 3  # the two linear layers' multiply-adds


def test_names_are_found_on_the_model_path_then_the_bundled_models(tmp_path, monkeypatch):
    write_tiny_models(tmp_path / "mine")
    monkeypatch.setenv("MCDROP_MODELS", str(tmp_path / "mine"))
    assert model_path()[0] == tmp_path / "mine" and model_path()[-1] == bundled_models_dir()
    assert resolve_model("tiny-reg") == tmp_path / "mine" / "tiny-reg"
    assert resolve_model("fashion-mnist") == bundled_models_dir() / "fashion-mnist"
    assert {"tiny-cls", "tiny-reg", "fashion-mnist", "concrete"} <= set(available_models())
    with pytest.raises(ArtifactError, match="model 'nope' not found") as err:
        resolve_model("nope")
    assert "tiny-cls" in str(err.value) and str(tmp_path / "mine") in str(err.value)


def test_bundled_models_come_from_the_package():
    """The checkout's models/ folder is installed as mcdrop.bundled (pyproject.toml), not found by a path."""
    import mcdrop.bundled

    assert bundled_models_dir() is not None and (bundled_models_dir() / "fashion-mnist" / "card.json").is_file()
    assert bundled_models_dir().samefile(next(iter(mcdrop.bundled.__path__)))


def test_save_model_is_all_or_nothing_and_says_what_the_card_needs(tmp_path):
    import pytest as _pytest
    from pydantic import ValidationError
    from torch import nn as _nn

    from mcdrop.nets.artifacts import save_model as _save
    from mcdrop.nets.models import DropoutMLP as _MLP

    with _pytest.raises(TypeError, match=r"use mcdrop\.export_model"):
        _save(_nn.Sequential(_nn.Linear(2, 2)), tmp_path / "m", {})
    with _pytest.raises(ValidationError):
        _save(_MLP(2, [4], 2), tmp_path / "m", {"version": "1"})  # no name, task, normalisation
    assert list(tmp_path.iterdir()) == [], "nothing half-written, no staging folder left"
    card = {"name": "m", "version": "1", "task": "classification", "input_shape": [2], "normalisation": "raw"}
    _save(_MLP(2, [4], 2), tmp_path / "m", card)
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with _pytest.raises(ValidationError):
        _save(_MLP(2, [4], 2), tmp_path / "m", {**card, "task": "nonsense"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "card.md", "notes.txt", "weights.safetensors"]
    _save(_MLP(2, [4], 2), tmp_path / "m", card)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine", "other files of the folder are kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    for field in ("name", "version", "task", "input_shape", "normalisation", "class_names", "tau"):
        assert field in (_save.__doc__ or "")


def test_card_markdown_renders_nested_metrics_as_tables():
    """The bundled classifier's card: every conformal set and OOD signal is a table row with the card's own
    figures, and no Python dict or long list is printed raw."""
    from mcdrop.nets.artifacts import load_artifact, render_card

    card = load_artifact("fashion-mnist").card
    text = render_card(card)
    assert "{'" not in text and "[[" not in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    mc = card.metrics["test_conformal"]["mc"]
    aps = rows["aps_randomized@0.95"]  # the last table of that name is the MC mode's
    assert f"{mc['aps_randomized@0.95']['empty']:.4f}" in aps and f"{mc['aps_randomized@0.95']['coverage']:.4f}" in aps
    assert f"{mc['abstention']['coverage']:.4f}" in rows["abstention"]
    assert f"{mc['abstention']['with_ood_flag']['coverage']:.4f}" in rows["abstention"]
    noise = card.metrics["ood_proxies"]["noise"]
    assert f"{noise['ood_score']['fpr95']:.4f}" in text and f"{noise['deterministic_entropy']['auroc']:.4f}" in text
    assert "(21 points in card.json)" in text
    assert text.index("### test_conformal") > text.index("- test_mc_50:")  # the one-line sections first
    fresh = card.model_copy(deep=True)  # as a writer holds it before the JSON round trip: bounds are tuples
    fresh.metrics["test_conformal"]["bounds"] = {k: tuple(v) for k, v in card.metrics["test_conformal"]["bounds"].items()}
    assert render_card(fresh) == text
